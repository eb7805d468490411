//! End-to-end: a real hub and real agents over loopback QUIC with mutual TLS.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tether_agent::AgentError;
use tether_protocol::{ErrorCode, Labels};
use tether_sim::fleet::{all_in_state, metric, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_pending_approve_ready() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, false, Labels::new()).await.unwrap();
    let started = Instant::now();
    let a = agent(&hub, dir.path(), "store-1", &token);

    // The request waits for a human.
    let pending = loop {
        let p = admin.join_requests().await.unwrap();
        if let Some(r) = p.into_iter().find(|r| r.name == "store-1") {
            break r;
        }
        assert!(started.elapsed() < WAIT, "join request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pending.state, tether_hub::api::JoinState::Pending);
    assert_eq!(pending.facts.arch, std::env::consts::ARCH);
    assert!(
        admin.clusters().await.unwrap().is_empty(),
        "not a cluster before approval"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.is_finished(), "agent keeps waiting for approval");

    let approved_at = Instant::now();
    admin.approve("store-1").await.unwrap();
    let clusters = wait_for(
        &admin,
        WAIT,
        "store-1 Ready",
        all_in_state(&names(&["store-1"]), "Ready"),
    )
    .await
    .unwrap();
    println!(
        "join -> Ready: {:?} after approval ({:?} since the agent started)",
        approved_at.elapsed(),
        started.elapsed()
    );
    let c = &clusters[0];
    assert!(c.connected);
    assert_eq!(c.labels["site"], "store-1");
    assert_eq!(c.facts.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(
        c.cert_not_after_ms > tether_hub::util::now_ms() + 29 * 86_400_000,
        "default validity is 30 days"
    );
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approve_token_and_single_use_refusal() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub
        .token(3, true, Labels::from([("region".into(), "eu-west".into())]))
        .await
        .unwrap();
    let started = Instant::now();
    let fleet: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| agent(&hub, dir.path(), n, &token))
        .collect();
    let clusters = wait_for(
        &admin,
        WAIT,
        "3 Ready",
        all_in_state(&names(&["a", "b", "c"]), "Ready"),
    )
    .await
    .unwrap();
    println!(
        "3 agents auto-approved and Ready in {:?}",
        started.elapsed()
    );
    assert!(
        clusters.iter().all(|c| c.labels["region"] == "eu-west"),
        "token labels are applied"
    );

    // The token had three uses: a fourth agent is refused, clearly, and gives up.
    let d = agent(&hub, dir.path(), "d", &token);
    let err = tokio::time::timeout(WAIT, d.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    match &err {
        // One refusal for every bad token (used up, unknown, expired, revoked): the joiner is
        // anonymous and learns nothing about the token.
        AgentError::JoinRefused(m) => assert_eq!(m.code, ErrorCode::TokenInvalid, "{err}"),
        other => panic!("expected JoinRefused, got {other}"),
    }
    assert_eq!(
        err.exit_code(),
        3,
        "a supervisor must not retry a bad token"
    );
    // Unknown token.
    let e = agent(&hub, dir.path(), "e", "tether1.0000");
    let err = tokio::time::timeout(WAIT, e.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::JoinRefused(m) if m.code == ErrorCode::TokenInvalid),
        "{err}"
    );
    // Duplicate name with a fresh token.
    let token2 = hub.token(1, true, Labels::new()).await.unwrap();
    let mut dup = spec(&hub, dir.path(), "a", &token2);
    dup.data_dir = dir.path().join("other-a");
    let dup = tether_sim::fleet::LocalAgent::spawn(dup);
    let err = tokio::time::timeout(WAIT, dup.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::JoinRefused(m) if m.code == ErrorCode::NameTaken),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2, "the agent's --name must change first");

    for a in fleet {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_cuts_a_live_session_within_a_second_and_the_certificate_stays_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Labels::new()).await.unwrap();
    let victim = agent(&hub, dir.path(), "victim", &token);
    let bystander = agent(&hub, dir.path(), "bystander", &token);
    wait_for(
        &admin,
        WAIT,
        "both Ready",
        all_in_state(&names(&["victim", "bystander"]), "Ready"),
    )
    .await
    .unwrap();

    eventually_async(|| async {
        admin.clusters().await.is_ok_and(|cs| {
            cs.iter().any(|c| {
                c.name == "victim"
                    && c.conditions
                        .iter()
                        .any(|k| k.kind == "AgentReady" && k.status == "True")
            })
        })
    })
    .await;
    let denied_at = Instant::now();
    let result = admin.deny("victim", "lost device").await.unwrap();
    assert!(result.session_closed);
    let err = tokio::time::timeout(Duration::from_secs(1), victim.task)
        .await
        .expect("agent must stop within 1 s of deny")
        .unwrap()
        .unwrap_err();
    println!("deny -> agent stopped: {:?}", denied_at.elapsed());
    assert!(
        matches!(&err, AgentError::Denied(r) if r == "lost device"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);

    // Restarting the agent does not help: its certificate is revoked at the TLS layer.
    let again = agent(&hub, dir.path(), "victim", &token);
    let err = tokio::time::timeout(WAIT, again.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Revoked), "{err}");

    // The bystander never noticed, and the hub records the denial.
    let clusters = admin.clusters().await.unwrap();
    let by = |n: &str| clusters.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!(by("bystander").state, tether_hub::api::ClusterState::Ready);
    assert_eq!(by("victim").state, tether_hub::api::ClusterState::Denied);
    assert!(
        by("victim").conditions.is_empty(),
        "a denied cluster keeps no stale AgentReady: {:?}",
        by("victim").conditions
    );
    let audit = admin.audit(100).await.unwrap();
    for kind in ["join_denied", "cert_revoked", "handshake_rejected"] {
        assert!(audit.iter().any(|e| e.kind == kind), "audit lacks {kind}");
    }
    let metrics = admin.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("tether_hub_handshakes_rejected_total{reason=\"revoked\"} 1"),
        "{metrics}"
    );
    bystander.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_cuts_the_session_and_frees_the_name() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Labels::new()).await.unwrap();
    let a = agent(&hub, dir.path(), "kiosk", &token);
    wait_for(
        &admin,
        WAIT,
        "Ready",
        all_in_state(&names(&["kiosk"]), "Ready"),
    )
    .await
    .unwrap();
    let t = Instant::now();
    assert!(admin.detach("kiosk").await.unwrap().session_closed);
    let err = tokio::time::timeout(Duration::from_secs(1), a.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    println!("detach -> agent stopped: {:?}", t.elapsed());
    assert!(matches!(err, AgentError::Detached(_)), "{err}");
    assert!(admin.clusters().await.unwrap().is_empty());
    // A new identity can take the name.
    let mut fresh = spec(&hub, dir.path(), "kiosk", &token);
    fresh.data_dir = dir.path().join("kiosk-reinstalled");
    let b = tether_sim::fleet::LocalAgent::spawn(fresh);
    wait_for(
        &admin,
        WAIT,
        "re-joined",
        all_in_state(&names(&["kiosk"]), "Ready"),
    )
    .await
    .unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_swaps_the_certificate_without_dropping_the_session() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    // 6 s certificates: renewal lands between ~4 s and ~5.5 s after issue.
    let hub = hub_with(dir.path(), |c| c.cert_validity = Duration::from_secs(6)).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let a = agent(&hub, dir.path(), "rotor", &token);
    let first = wait_for(
        &admin,
        WAIT,
        "Ready",
        all_in_state(&names(&["rotor"]), "Ready"),
    )
    .await
    .unwrap();
    let serial0 = first[0].cert_serial.clone();
    let session0 = hub.running().state.sessions.stable_id("rotor").unwrap();

    let renewed = wait_for(&admin, WAIT, "a renewed certificate", |c| {
        c.iter().any(|c| c.cert_serial != serial0)
    })
    .await
    .unwrap();
    let renewed_at = tether_hub::util::now_ms();
    // Same QUIC connection, still Ready, heartbeats still arriving after the swap.
    assert_eq!(
        hub.running().state.sessions.stable_id("rotor"),
        Some(session0)
    );
    tokio::time::sleep(HEARTBEAT * 3).await;
    let after = admin.cluster("rotor").await.unwrap();
    assert_eq!(after.state, tether_hub::api::ClusterState::Ready);
    assert!(
        after.last_seen_ms.unwrap() > renewed_at,
        "heartbeats continue on the same session"
    );
    assert_eq!(
        hub.running().state.sessions.stable_id("rotor"),
        Some(session0)
    );
    assert!(renewed[0].cert_not_after_ms > first[0].cert_not_after_ms);

    // The stored identity is the renewed one: a restarted agent connects with it (the first
    // serial would also still be accepted until it expires, so check the agent's own store).
    a.stop().await.unwrap();
    let store = tether_store::Store::open(dir.path().join("agents/rotor/agent.redb")).unwrap();
    let id = store
        .read(|tx| tx.get(&tether_store::agent::IDENTITY, tether_store::agent::CURRENT))
        .unwrap()
        .unwrap();
    let stored_serial = tether_transport::certs::inspect_pem(&id.cert_pem)
        .unwrap()
        .serial_hex;
    assert_ne!(stored_serial, serial0);
    drop(store);
    let b = agent(&hub, dir.path(), "rotor", &token);
    wait_for(&admin, WAIT, "Ready again", |c| {
        c.iter().any(|c| {
            c.name == "rotor" && c.state == tether_hub::api::ClusterState::Ready && c.connected
        })
    })
    .await
    .unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_keeps_cluster_records_and_agents_come_back() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path()).await;
    let token = hub.token(2, true, Labels::new()).await.unwrap();
    let fleet = [
        agent(&hub, dir.path(), "r1", &token),
        agent(&hub, dir.path(), "r2", &token),
    ];
    let both = names(&["r1", "r2"]);
    let before = wait_for(
        &hub.admin().unwrap(),
        WAIT,
        "Ready",
        all_in_state(&both, "Ready"),
    )
    .await
    .unwrap();

    hub.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    hub.restart().await.unwrap();
    let admin = hub.admin().unwrap();
    let after_restart = admin.clusters().await.unwrap();
    assert_eq!(after_restart.len(), 2, "records survive the restart");
    for c in &after_restart {
        let old = before.iter().find(|b| b.name == c.name).unwrap();
        assert_eq!(
            (c.cert_serial.as_str(), &c.labels, c.joined_at_ms),
            (old.cert_serial.as_str(), &old.labels, old.joined_at_ms)
        );
        assert!(c.last_seen_ms.is_some());
    }
    wait_for(
        &admin,
        WAIT,
        "Ready after restart",
        all_in_state(&both, "Ready"),
    )
    .await
    .unwrap();
    println!(
        "hub restart -> both agents Ready again in {:?}",
        t.elapsed()
    );
    for a in fleet {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_unknown_then_offline_and_back_to_ready() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let n = names(&["h1"]);
    let a = agent(&hub, dir.path(), "h1", &token);
    wait_for(&admin, WAIT, "Ready", all_in_state(&n, "Ready"))
        .await
        .unwrap();
    a.stop().await.unwrap();
    let t = Instant::now();
    wait_for(&admin, WAIT, "Unknown", all_in_state(&n, "Unknown"))
        .await
        .unwrap();
    wait_for(&admin, WAIT, "Offline", all_in_state(&n, "Offline"))
        .await
        .unwrap();
    let offline_after = t.elapsed();
    assert!(
        offline_after >= OFFLINE_GRACE - Duration::from_millis(100),
        "Offline only after the grace period ({offline_after:?})"
    );
    let b = agent(&hub, dir.path(), "h1", &token);
    wait_for(&admin, WAIT, "Ready again", all_in_state(&n, "Ready"))
        .await
        .unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_pin_is_refused_by_the_agent() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let mut s = spec(&hub, dir.path(), "p1", &token);
    s.ca_sha256 = "00".repeat(32);
    let a = tether_sim::fleet::LocalAgent::spawn(s);
    let err = tokio::time::timeout(WAIT, a.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::CaPinMismatch(m) if m.contains("fingerprint mismatch") && m.contains(&hub.ca_sha256)),
        "{err}"
    );
    // Nothing was submitted: the token is unused.
    let tokens = hub.admin().unwrap().tokens().await.unwrap();
    assert_eq!(tokens[0].used, 0);
}

/// After the first heartbeat (which carries the facts) an idle agent's heartbeats are
/// datagrams, and they alone keep its cluster Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeats_are_datagrams_and_keep_the_cluster_ready() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let n = names(&["quiet"]);
    let a = agent(&hub, dir.path(), "quiet", &token);
    wait_for(&admin, WAIT, "Ready", all_in_state(&n, "Ready"))
        .await
        .unwrap();
    tokio::time::sleep(HEARTBEAT * 2).await;
    let counts = || async {
        let text = admin.get_text("/metrics").await.unwrap();
        (
            metric(&text, "tether_hub_heartbeats_total"),
            metric(&text, "tether_hub_heartbeat_datagrams_total"),
        )
    };
    let (all0, datagrams0) = counts().await;
    // 15 heartbeat periods: Unknown would come after 3 without a heartbeat.
    tokio::time::sleep(HEARTBEAT * 15).await;
    let (all1, datagrams1) = counts().await;
    let datagrams = datagrams1 - datagrams0;
    assert!(
        datagrams >= 8.0,
        "{datagrams} datagram heartbeats in 15 periods"
    );
    assert_eq!(
        all1 - all0,
        datagrams,
        "a stream heartbeat was sent although the facts did not change"
    );
    let c = admin.cluster("quiet").await.unwrap();
    assert_eq!(c.state, tether_hub::api::ClusterState::Ready);
    a.stop().await.unwrap();
}

/// The real binary with a token that expired: it says so and exits with the code supervisors
/// are told not to restart on (3), instead of retrying a join that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_stops_the_agent_binary_with_the_cut_off_code() {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let token = hub
        .admin()
        .unwrap()
        .create_token(&tether_hub::api::CreateTokenRequest {
            ttl_secs: 1,
            uses: 1,
            auto_approve: true,
            labels: Labels::new(),
            allowed_labels: Vec::new(),
        })
        .await
        .unwrap()
        .token;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut agent = AgentProcess::spawn(&bin, &hub, dir.path(), "late", &token);
    let status = agent
        .exited_within(WAIT)
        .await
        .expect("the agent kept retrying an expired token");
    let log = std::fs::read_to_string(dir.path().join("late.log")).unwrap();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("refused the join request"), "{log}");
}

/// `tether-agent status` while the agent runs (it holds the database's lock) reads the status
/// file the agent writes; once the agent is gone it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_works_while_the_agent_binary_runs() {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let agent = AgentProcess::spawn(&bin, &hub, dir.path(), "watched", &token);
    wait_for(
        &admin,
        WAIT,
        "Ready",
        all_in_state(&names(&["watched"]), "Ready"),
    )
    .await
    .unwrap();
    let data_dir = dir.path().join("agents").join("watched");
    let status = || {
        let out = std::process::Command::new(&bin)
            .args(["status", "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let start = Instant::now();
    let (ok, text) = loop {
        let (ok, text) = status();
        if text.contains("connected to") || start.elapsed() > WAIT {
            break (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ok, "{text}");
    assert!(text.contains("cluster: watched"), "{text}");
    assert!(text.contains("agent: running (pid"), "{text}");
    assert!(
        text.contains(&format!(
            "connected to localhost:{}",
            hub.quic_addr().port()
        )),
        "{text}"
    );

    agent.kill9();
    let (ok, text) = status();
    assert!(ok, "{text}");
    assert!(
        text.contains("last run:") && text.contains("not running"),
        "{text}"
    );

    // Once heartbeats stop the hub does not repeat the agent's last AgentReady=True as current.
    let start = Instant::now();
    loop {
        let cs = admin.clusters().await.unwrap();
        let c = cs.iter().find(|c| c.name == "watched").unwrap();
        if c.conditions
            .iter()
            .any(|k| k.kind == "AgentReady" && k.status == "Unknown" && k.reason == "NoHeartbeat")
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "stale conditions: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A denied cluster keeps what it runs (the edge stays in charge); its owner can take it away
/// locally with `leave --remove-objects`, which removes the objects before wiping the identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_cluster_keeps_its_works_until_its_owner_removes_them_on_leave() {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let mut agent = AgentProcess::spawn(&bin, &hub, d, "gone", &token);
    admin
        .apply_work(&work_from(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
            "metadata": {"name": "app"},
            "spec": {"targets": {"clusters": ["gone"]}, "manifests": [{"apiVersion": "v1",
                "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"},
                "data": {"k": "v"}}]},
        })))
        .await
        .unwrap();
    wait_applied(&admin, "app", 1, 1).await;
    let file = manifests_dir(d, "gone").join("tether-app.yaml");
    assert!(file.exists());

    admin.deny("gone", "decommissioned").await.unwrap();
    let status = agent
        .exited_within(WAIT)
        .await
        .expect("a denied agent kept running");
    assert_eq!(status.code(), Some(3));
    assert!(
        file.exists(),
        "a denial alone must not take the workload down"
    );

    let data_dir = d.join("agents").join("gone");
    let out = std::process::Command::new(&bin)
        .args(["leave", "--remove-objects", "--data-dir"])
        .arg(&data_dir)
        .arg(format!(
            "--executor=dir:{}",
            manifests_dir(d, "gone").display()
        ))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("removed 1 work(s): app"), "{text}");
    assert!(!file.exists(), "{text}");
    let out = std::process::Command::new(&bin)
        .args(["status", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not joined"));
}

/// Several `--hub` addresses: each agent prefers its own (rendezvous order), and one whose
/// first choice is dead joins and runs through the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_preferred_hub_is_dead_moves_to_the_next() {
    use tether_agent::hubs::{order, Target};
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    // A UDP port that never answers: the worst case, a connect that times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let live = format!("127.0.0.1:{}", hub.quic_addr().port());
    let target = |s: &str| Target {
        name: s.to_string(),
        host: "127.0.0.1".into(),
        addr: s.parse().unwrap(),
    };
    let name = (0..)
        .map(|i| format!("edge-{i}"))
        .find(|n| order(n, vec![target(&live), target(&dead)])[0].name == dead)
        .unwrap();
    let data_dir = d.join("agents").join(&name);
    let log = std::fs::File::create(d.join("moved.log")).unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--data-dir"])
        .arg(&data_dir)
        .args(["--hub", &dead, "--hub", &live, "--token", &token])
        .args(["--ca-sha256", &hub.ca_sha256, "--name", &name])
        .args(["--executor", "memory", "--backoff-cap", "1s"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let ready = admin.clusters().await.is_ok_and(|cs| {
            cs.iter()
                .any(|c| c.name == name && c.state == tether_hub::api::ClusterState::Ready)
        });
        if ready {
            break;
        }
        let log = std::fs::read_to_string(d.join("moved.log")).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not Ready through the second address: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(d.join("moved.log")).unwrap();
    assert!(
        log.contains(&dead),
        "the preferred (dead) address was not tried first: {log}"
    );
    println!(
        "Ready through the second address after {:?}",
        start.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
}
