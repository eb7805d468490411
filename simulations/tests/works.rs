//! End-to-end work propagation: a real hub and real agents (dir executor) over loopback QUIC.

mod common;

use common::*;
use std::path::Path;
use tether_sim::fleet::{all_in_state, metric, wait_for};

fn file(dir: &Path, cluster: &str, work: &str) -> std::path::PathBuf {
    manifests_dir(dir, cluster).join(format!("tether-{work}.yaml"))
}

fn read(dir: &Path, cluster: &str, work: &str) -> Option<String> {
    std::fs::read_to_string(file(dir, cluster, work)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_update_retarget_delete_and_orphan() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Default::default()).await.unwrap();
    let all = ["a", "b", "c"];
    let agents: Vec<_> = all.iter().map(|n| agent(&hub, d, n, &token)).collect();
    wait_for(&admin, WAIT, "3 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();

    // Apply: every cluster gets it and reports generation 1.
    let web = config_work("web", everywhere(), &["one", "two"], "v1");
    let r = admin.apply_work(&web).await.unwrap();
    assert_eq!(
        (r.generation, r.outcome),
        (1, tether_hub::api::ApplyOutcome::Created)
    );
    let detail = wait_applied(&admin, "web", 1, 3).await;
    assert!(detail
        .clusters
        .iter()
        .all(|c| c.delivered_generation == Some(1)));
    for c in all {
        let text = read(d, c, "web").unwrap();
        assert!(
            text.contains("name: \"web-one\"") && text.contains("value: \"v1\""),
            "{text}"
        );
    }

    // Re-applying the same document changes nothing.
    let r = admin.apply_work(&web).await.unwrap();
    assert_eq!(
        (r.generation, r.outcome),
        (1, tether_hub::api::ApplyOutcome::Unchanged)
    );

    // Update: generation 2 everywhere, files rewritten.
    let web2 = config_work("web", everywhere(), &["one", "two"], "v2");
    assert_eq!(admin.apply_work(&web2).await.unwrap().generation, 2);
    wait_applied(&admin, "web", 2, 3).await;
    for c in all {
        assert!(read(d, c, "web").unwrap().contains("value: \"v2\""));
    }

    // Retarget to a and b: c removes it; a and b move to generation 3 without the bundle
    // being sent again.
    let bytes_before = metric(
        &admin.get_text("/metrics").await.unwrap(),
        "tether_hub_delivered_bytes_total",
    );
    let web3 = config_work("web", only(&["a", "b"]), &["one", "two"], "v2");
    assert_eq!(admin.apply_work(&web3).await.unwrap().generation, 3);
    wait_applied(&admin, "web", 3, 2).await;
    eventually("c removes web", || read(d, "c", "web").is_none()).await;
    let bytes_after = metric(
        &admin.get_text("/metrics").await.unwrap(),
        "tether_hub_delivered_bytes_total",
    );
    assert_eq!(bytes_before, bytes_after, "unchanged content was re-sent");
    assert!(read(d, "a", "web").is_some());

    // Delete with --orphan: the hub stops managing it, the files stay.
    let cfg = config_work("cfg", everywhere(), &["x"], "keep");
    admin.apply_work(&cfg).await.unwrap();
    wait_applied(&admin, "cfg", 1, 3).await;
    admin.delete_work("cfg", true).await.unwrap();
    eventually_async(|| async { admin.work("cfg").await.is_err() }).await;
    for c in all {
        assert!(
            read(d, c, "cfg").is_some(),
            "{c}: orphaned file was removed"
        );
    }

    // Delete: removed everywhere.
    admin.delete_work("web", false).await.unwrap();
    eventually_async(|| async { admin.work("web").await.is_err() }).await;
    for c in all {
        assert!(read(d, c, "web").is_none(), "{c}: deleted work left behind");
    }
    assert!(admin.works().await.unwrap().is_empty());
    assert!(admin
        .delete_work("web", false)
        .await
        .unwrap_err()
        .to_string()
        .contains("not found"));

    let metrics = admin.get_text("/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "tether_hub_status_gaps_total"), 0.0);
    for a in agents {
        a.stop().await.unwrap();
    }
    for c in all {
        assert_status_history_exact(&admin, c, &d.join("agents").join(c)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_works_are_refused_with_clear_errors() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let mut w = config_work("Bad_Name", everywhere(), &["x"], "v");
    w.spec.manifests.push(serde_json::json!({"kind": "Pod"}));
    let err = admin.apply_work(&w).await.unwrap_err().to_string();
    assert!(
        err.contains("work name") && err.contains("missing apiVersion"),
        "{err}"
    );

    // Too large for one frame even compressed: random data does not compress.
    use rand::RngCore;
    let mut noise = vec![0u8; 8 * 1024 * 1024];
    rand::rng().fill_bytes(&mut noise);
    let letters: String = noise.iter().map(|b| (b'a' + b % 26) as char).collect();
    let big = config_work("big", everywhere(), &["x"], &letters);
    let err = admin.apply_work(&big).await.unwrap_err().to_string();
    assert!(
        err.contains("too large") && err.contains("Split it"),
        "{err}"
    );

    let err =
        tether_hub::parse_work_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("not a Work"), "{err}");
    let err = tether_hub::parse_work_documents(
        "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {name: x}\nspec: {targets: {clusters: [a]}, manifests: [], placment: {}}\n",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("placment"), "{err:#}");
}

/// Kill -9 mid-apply, updates while down, hub restart, agent restart while the hub is down
/// (drift repaired offline); afterwards everyone reports the latest generation and the hub's
/// status history has no gaps and no duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kills_restarts_and_outages() {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Default::default()).await.unwrap();
    let all = ["a", "b", "c"];
    let mut procs: Vec<Option<AgentProcess>> = all
        .iter()
        .map(|n| Some(AgentProcess::spawn(&bin, &hub, d, n, &token)))
        .collect();
    wait_for(&admin, WAIT, "3 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();

    // A work with many objects; kill c with SIGKILL while it is being applied.
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    admin
        .apply_work(&config_work("app", everywhere(), &keys, "g1"))
        .await
        .unwrap();
    eventually_async(|| async {
        admin.work("app").await.is_ok_and(|w| {
            w.clusters
                .iter()
                .any(|c| c.cluster == "c" && c.delivered_generation == Some(1))
        })
    })
    .await;
    procs[2].take().unwrap().kill9();
    wait_applied_on(&admin, "app", 1, &["a", "b"]).await;

    // Update while c is down; a and b follow.
    admin
        .apply_work(&config_work("app", everywhere(), &keys, "g2"))
        .await
        .unwrap();
    wait_applied_on(&admin, "app", 2, &["a", "b"]).await;

    // c returns and catches up.
    procs[2] = Some(AgentProcess::spawn(&bin, &hub, d, "c", &token));
    wait_applied(&admin, "app", 2, 3).await;
    assert!(read(d, "c", "app").unwrap().contains("value: \"g2\""));

    // Hub goes down. b is killed too, its file is tampered with and removed, and b restarts
    // while the hub is still down: it must enforce the last known desired state by itself.
    hub.stop().await;
    procs[1].take().unwrap().kill9();
    std::fs::write(file(d, "b", "app"), "tampered: true\n").unwrap();
    std::fs::write(file(d, "a", "app"), "tampered: true\n").unwrap();
    procs[1] = Some(AgentProcess::spawn(&bin, &hub, d, "b", &token));
    eventually("b repairs its file with the hub down", || {
        read(d, "b", "app").is_some_and(|t| t.contains("value: \"g2\""))
    })
    .await;
    eventually("a repairs drift with the hub down", || {
        read(d, "a", "app").is_some_and(|t| t.contains("value: \"g2\""))
    })
    .await;
    std::fs::remove_file(file(d, "c", "app")).unwrap();
    eventually("c recreates its deleted file with the hub down", || {
        read(d, "c", "app").is_some()
    })
    .await;

    // Hub back: everyone reconnects, nothing is re-sent, generation 3 goes out.
    hub.restart().await.unwrap();
    wait_for(
        &admin,
        WAIT,
        "3 Ready after hub restart",
        all_in_state(&names(&all), "Ready"),
    )
    .await
    .unwrap();
    wait_applied(&admin, "app", 2, 3).await;
    admin
        .apply_work(&config_work("app", everywhere(), &keys, "g3"))
        .await
        .unwrap();
    wait_applied(&admin, "app", 3, 3).await;

    let metrics = admin.get_text("/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "tether_hub_status_gaps_total"), 0.0);
    // Graceful stop so that the stores can be inspected.
    for p in procs.iter_mut() {
        let mut p = p.take().unwrap();
        let pid = p.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let _ = p.child.wait();
    }
    for c in all {
        assert_status_history_exact(&admin, c, &d.join("agents").join(c)).await;
    }
}

async fn wait_applied_on(
    admin: &tether_hub::AdminClient,
    work: &str,
    generation: u64,
    clusters: &[&str],
) {
    eventually_async(|| async {
        admin.work(work).await.is_ok_and(|w| {
            clusters.iter().all(|n| {
                w.clusters
                    .iter()
                    .any(|c| &c.cluster == n && c.applied_generation == Some(generation))
            })
        })
    })
    .await;
}

/// What kubectl users have: a directory of plain manifests, applied through the real
/// `tetherctl` binary with --name and --clusters, ends up as one Work on the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherctl_applies_a_directory_of_plain_manifests() {
    init_logs();
    let ctl = built_binary("tether-hub", "tetherctl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    // The admin port was chosen at start, so the config `init` wrote does not know it.
    let ctl_config = d.join("tetherctl.yaml");
    std::fs::write(&ctl_config, hub.ctl_config().unwrap().to_yaml()).unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let (agent, mem) = memory_agent(&hub, d, "edge", &token);
    wait_for(
        &admin,
        WAIT,
        "edge Ready",
        all_in_state(&names(&["edge"]), "Ready"),
    )
    .await
    .unwrap();

    let app = d.join("app");
    std::fs::create_dir_all(app.join("config")).unwrap();
    std::fs::write(
        app.join("config/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {mode: fast}\n",
    )
    .unwrap();
    std::fs::write(
        app.join("service.json"),
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}"#,
    )
    .unwrap();
    std::fs::write(app.join("README.md"), "not a manifest").unwrap();

    let run = |extra: &'static [&'static str]| {
        let (ctl, cfg, app) = (ctl.clone(), ctl_config.clone(), app.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(ctl)
                .arg("--config")
                .arg(cfg)
                .args(["apply", "-f"])
                .arg(app)
                .args(["--name", "app", "--clusters", "edge"])
                .args(extra)
                .output()
                .expect("running tetherctl")
        })
    };
    let dry = run(&["--dry-run"]).await.unwrap();
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        text.contains("kind: Work") && text.contains("tether.dev/source"),
        "{text}"
    );
    assert!(
        admin.work("app").await.is_err(),
        "--dry-run reached the hub"
    );

    let out = run(&[]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("work/app created"));
    let detail = wait_applied(&admin, "app", 1, 1).await;
    let source = &detail.document.metadata.annotations["tether.dev/source"];
    assert!(
        source.starts_with("files: ")
            && source.contains("config/settings.yaml")
            && source.contains("service.json")
            && !source.contains("README"),
        "{source}"
    );
    let objects = mem.objects();
    let held: Vec<String> = objects
        .keys()
        .map(|r| format!("{}/{}", r.kind, r.name))
        .collect();
    assert_eq!(held, vec!["ConfigMap/settings", "Service/web"], "{held:?}");
    agent.stop().await.unwrap();
}

/// The edge's consent policy, as the real binary enforces it: a work that would bind
/// cluster-admin and write into kube-system gets only its harmless part applied, and the
/// refusal is a typed status the hub shows (phase Failed, condition EdgePolicy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_policy_refuses_a_takeover_and_applies_the_rest() {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let _agent = AgentProcess::spawn(&bin, &hub, d, "edge", &token);
    admin
        .apply_work(&work_from(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
            "metadata": {"name": "takeover"},
            "spec": {"targets": {"clusters": ["edge"]}, "manifests": [
                {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "harmless", "namespace": "default"}, "data": {"k": "v"}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "open-door"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "Group", "name": "system:unauthenticated", "apiGroup": "rbac.authorization.k8s.io"}]},
                {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "planted", "namespace": "kube-system"}, "stringData": {"k": "v"}},
            ]},
        })))
        .await
        .unwrap();
    eventually_async(|| async {
        admin.work("takeover").await.is_ok_and(|w| {
            w.clusters.iter().any(|c| {
                c.phase == Some(tether_protocol::WorkPhase::Failed)
                    && c.conditions
                        .iter()
                        .any(|k| k.kind == "EdgePolicy" && k.reason == "Refused")
            })
        })
    })
    .await;
    let w = admin.work("takeover").await.unwrap();
    let row = &w.clusters[0];
    assert!(
        row.message.contains("binds cluster-admin")
            && row.message.contains("namespace kube-system is denied"),
        "{}",
        row.message
    );
    let written =
        std::fs::read_to_string(manifests_dir(d, "edge").join("tether-takeover.yaml")).unwrap();
    assert!(written.contains("harmless"), "{written}");
    assert!(
        !written.contains("open-door") && !written.contains("planted"),
        "{written}"
    );
}

/// The deletion circuit breaker of the real binary: removing a work that holds 30 of the 32
/// objects the agent manages is held and reported; a confirmation on the cluster releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deletion_breaker_holds_a_mass_removal_until_confirmed() {
    breaker_holds_until(Confirm::OnTheCluster).await;
}

/// The same, confirmed by an operator through the hub (`tetherctl works confirm-removal`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_removal_is_released_by_a_confirmation_through_the_hub() {
    breaker_holds_until(Confirm::ThroughTheHub).await;
}

enum Confirm {
    OnTheCluster,
    ThroughTheHub,
}

async fn breaker_holds_until(confirm: Confirm) {
    init_logs();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let _agent = AgentProcess::spawn(&bin, &hub, d, "edge", &token);
    let work = |name: &str, n: usize| {
        let manifests: Vec<_> = (0..n)
            .map(|i| {
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-{i}"), "namespace": "default"}})
            })
            .collect();
        work_from(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": name},
            "spec": {"targets": {"clusters": ["edge"]}, "manifests": manifests},
        }))
    };
    admin.apply_work(&work("big", 30)).await.unwrap();
    admin.apply_work(&work("small", 2)).await.unwrap();
    wait_applied(&admin, "big", 1, 1).await;
    wait_applied(&admin, "small", 1, 1).await;
    let file = manifests_dir(d, "edge").join("tether-big.yaml");

    admin.delete_work("big", false).await.unwrap();
    // The hub no longer tracks the work it removed: the hold shows on the cluster.
    let start = std::time::Instant::now();
    let held = loop {
        let cs = admin.clusters().await.unwrap();
        let held = cs
            .iter()
            .flat_map(|c| c.conditions.iter())
            .find(|k| k.kind == "DeletionBreaker" && k.status == "True")
            .cloned();
        if let Some(h) = held {
            break h;
        }
        if start.elapsed() > WAIT {
            let log = std::fs::read_to_string(d.join("edge.log")).unwrap_or_default();
            panic!("not held: {cs:#?}\n{log}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        held.message.contains("work big") && held.message.contains("would delete 30 of 32"),
        "{}",
        held.message
    );
    assert!(file.exists(), "a held removal deleted the objects");

    match confirm {
        Confirm::OnTheCluster => {
            let out = std::process::Command::new(&bin)
                .args(["confirm-removal", "--data-dir"])
                .arg(d.join("agents").join("edge"))
                .arg("big")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Confirm::ThroughTheHub => {
            let ctl = Ctl::for_hub(d, &hub);
            let out = ctl
                .run(&["works", "confirm-removal", "big", "--cluster", "edge"])
                .await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("goes ahead"),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let audit = admin.audit(50).await.unwrap();
            assert!(
                audit.iter().any(|e| e.kind == "removal_confirmed"
                    && e.actor == "admin:tether-admin"
                    && e.detail.contains("held there: true")),
                "{audit:#?}"
            );
        }
    }
    eventually("the confirmed removal", || !file.exists()).await;
    assert!(manifests_dir(d, "edge").join("tether-small.yaml").exists());
    eventually_async(|| async {
        admin.clusters().await.is_ok_and(|cs| {
            cs.iter()
                .all(|c| c.conditions.iter().all(|k| k.kind != "DeletionBreaker"))
        })
    })
    .await;
}

/// A work of `n` ConfigMaps whose values do not compress into each other, with `changed`'s
/// value set to `value`: a one-line change to something the size of a real install.
fn install_like(n: usize, changed: usize, value: &str) -> tether_protocol::work::WorkDocument {
    // Values that share nothing (xorshift), as image digests and generated names don't.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = || {
        (0..4)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect::<String>()
    };
    let mut doc = config_work("install", everywhere(), &[], "");
    doc.spec.manifests = (0..n)
        .map(|i| {
            let random = noise();
            let v = if i == changed {
                value.to_string()
            } else {
                random
            };
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("install-{i}"), "namespace": "default"},
                "data": {"value": v, "args": "no"},
            })
        })
        .collect();
    doc
}

/// A changed work goes to agents as a patch against what they hold: a one-line change costs
/// bytes, not the install. A restarted hub, which has sent nothing yet, still patches against
/// what the agents report holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_work_travels_as_a_patch_of_what_changed() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let all = ["a", "b"];
    let agents: Vec<_> = all.iter().map(|n| agent(&hub, d, n, &token)).collect();
    wait_for(&admin, WAIT, "2 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    let sent = |m: &str| {
        (
            metric(m, "tether_hub_delivered_bytes_total"),
            metric(m, "tether_hub_deliveries_patched_total"),
        )
    };

    admin.apply_work(&install_like(400, 7, "v1")).await.unwrap();
    wait_applied(&admin, "install", 1, 2).await;
    let (whole, patched) = sent(&admin.get_text("/metrics").await.unwrap());
    assert_eq!(patched, 0.0, "a first delivery is whole");
    let whole_per_agent = whole / 2.0;
    assert!(whole_per_agent > 10_000.0, "{whole_per_agent}");

    admin.apply_work(&install_like(400, 7, "v2")).await.unwrap();
    wait_applied(&admin, "install", 2, 2).await;
    let (after, patched) = sent(&admin.get_text("/metrics").await.unwrap());
    assert_eq!(patched, 2.0);
    let patch_per_agent = (after - whole) / 2.0;
    assert!(
        patch_per_agent * 50.0 < whole_per_agent,
        "patch {patch_per_agent} B vs whole {whole_per_agent} B"
    );
    for c in all {
        let text = read(d, c, "install").unwrap();
        assert!(text.contains("value: \"v2\"") && !text.contains("value: \"v1\""));
        assert_eq!(text.matches("kind: \"ConfigMap\"").count(), 400, "{c}");
    }

    // A new hub process knows no contents yet; the agents' inventories name theirs.
    hub.restart().await.unwrap();
    let admin = hub.admin().unwrap();
    wait_for(
        &admin,
        WAIT,
        "2 Ready again",
        all_in_state(&names(&all), "Ready"),
    )
    .await
    .unwrap();
    admin.apply_work(&install_like(400, 7, "v3")).await.unwrap();
    wait_applied(&admin, "install", 3, 2).await;
    let (bytes, patched) = sent(&admin.get_text("/metrics").await.unwrap());
    assert_eq!(patched, 2.0, "after a restart");
    assert!(bytes / 2.0 * 50.0 < whole_per_agent, "{bytes} B");
    for c in all {
        assert!(read(d, c, "install").unwrap().contains("value: \"v3\""));
    }
    for a in agents {
        a.stop().await.unwrap();
    }
}
