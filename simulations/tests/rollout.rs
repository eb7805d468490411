//! End-to-end placement, overrides and progressive rollouts with a real hub and real agents.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tether_sim::fleet::{all_in_state, wait_for};

fn configmap_work(
    name: &str,
    value: &str,
    rollout: serde_json::Value,
    overrides: serde_json::Value,
) -> tether_protocol::work::WorkDocument {
    work_from(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
        "metadata": {"name": name},
        "spec": {
            "placement": {"selector": {}},
            "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}}],
            "rollout": rollout,
            "overrides": overrides,
        }
    }))
}

async fn rollout_until(
    admin: &tether_hub::AdminClient,
    work: &str,
    mut pred: impl FnMut(&tether_hub::RolloutView) -> bool,
) -> tether_hub::RolloutView {
    let start = Instant::now();
    loop {
        if let Ok(r) = admin.rollout(work).await {
            if pred(&r) {
                return r;
            }
            assert!(start.elapsed() < WAIT, "rollout of {work} stuck: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_rollout_completes_without_the_offline_site_which_catches_up() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(6, true, Default::default()).await.unwrap();
    let all = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let mut agents: Vec<_> = all
        .iter()
        .map(|n| Some(memory_agent(&hub, d, n, &token)))
        .collect();
    wait_for(&admin, WAIT, "6 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();

    let progressive = json!({"strategy": "Progressive", "maxConcurrency": 2, "maxFailures": 0});
    admin
        .apply_work(&configmap_work("app", "v1", progressive.clone(), json!([])))
        .await
        .unwrap();
    wait_applied(&admin, "app", 1, 6).await;

    // s6 goes offline; generation 2 rolls out two at a time over the other five.
    let (s6, s6_mem) = agents[5].take().unwrap();
    s6.stop().await.unwrap();
    wait_for(&admin, WAIT, "s6 not Ready", |cs| {
        cs.iter()
            .any(|c| c.name == "s6" && c.state != tether_hub::api::ClusterState::Ready)
    })
    .await
    .unwrap();
    admin
        .apply_work(&configmap_work("app", "v2", progressive.clone(), json!([])))
        .await
        .unwrap();
    let mut max_seen = 0;
    let done = rollout_until(&admin, "app", |r| {
        if r.generation == 2 {
            max_seen = max_seen.max(r.in_flight);
        }
        r.generation == 2 && r.phase == tether_hub::api::RolloutPhase::Complete
    })
    .await;
    assert!(
        max_seen <= 2,
        "more than maxConcurrency in flight: {max_seen}"
    );
    assert_eq!(
        (done.done, done.pending_offline, done.failed),
        (5, 1, 0),
        "{done:?}"
    );
    let w = admin.work("app").await.unwrap();
    let s6_row = w.clusters.iter().find(|c| c.cluster == "s6").unwrap();
    assert_eq!(
        s6_row.applied_generation,
        Some(1),
        "offline site must not have moved"
    );

    // s6 returns and catches up.
    agents[5] = Some((memory_agent_again(&hub, d, "s6", &token, &s6_mem), s6_mem));
    wait_applied(&admin, "app", 2, 6).await;
    let cm = agents[5].as_ref().unwrap().1.objects();
    assert!(cm.values().any(|v| v["data"]["v"] == "v2"), "{cm:?}");
    for a in agents.into_iter().flatten() {
        a.0.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_budget_pause_and_auto_rollback_restores() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(4, true, Default::default()).await.unwrap();
    let all = ["a", "b", "c", "d"];
    let agents: Vec<_> = all
        .iter()
        .map(|n| memory_agent(&hub, d, n, &token))
        .collect();
    wait_for(&admin, WAIT, "4 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();

    // Generation 2 fails on a and b (an override makes their copy fail to apply).
    let breaks_a_b = json!([{"clusters": ["a", "b"], "annotations": {"tether.dev/simulate-failure": "bad config"}}]);
    let strategy = json!({"strategy": "Progressive", "maxConcurrency": 4, "maxFailures": 1});
    admin
        .apply_work(&configmap_work("paused", "v1", strategy.clone(), json!([])))
        .await
        .unwrap();
    wait_applied(&admin, "paused", 1, 4).await;
    admin
        .apply_work(&configmap_work(
            "paused",
            "v2",
            strategy.clone(),
            breaks_a_b.clone(),
        ))
        .await
        .unwrap();
    let r = rollout_until(&admin, "paused", |r| {
        r.generation == 2 && r.phase == tether_hub::api::RolloutPhase::Paused
    })
    .await;
    assert!(r.reason.contains("failure budget"), "{r:?}");
    assert_eq!(r.failed, 2);

    // Operator pause / resume round trip is accepted.
    admin.rollout_action("paused", "pause", None).await.unwrap();
    assert!(admin.rollout("paused").await.unwrap().paused);
    admin
        .rollout_action("paused", "resume", None)
        .await
        .unwrap();

    // The same with autoRollback: generation 3 restores generation 1 everywhere.
    let auto = json!({"strategy": "Progressive", "maxConcurrency": 1, "maxFailures": 0, "autoRollback": true});
    admin
        .apply_work(&configmap_work("auto", "v1", auto.clone(), json!([])))
        .await
        .unwrap();
    wait_applied(&admin, "auto", 1, 4).await;
    admin
        .apply_work(&configmap_work(
            "auto",
            "v2",
            auto.clone(),
            json!([{"clusters": all, "annotations": {"tether.dev/simulate-failure": "boom"}}]),
        ))
        .await
        .unwrap();
    let r = rollout_until(&admin, "auto", |r| r.rollback_of == Some(1)).await;
    assert_eq!(r.generation, 3);
    let detail = wait_applied(&admin, "auto", 3, 4).await;
    assert!(detail
        .clusters
        .iter()
        .all(|c| c.phase == Some(tether_protocol::WorkPhase::Available)));
    // Only one cluster ever received the failing generation (maxConcurrency 1, budget 0).
    let history: usize = {
        let mut n = 0;
        for c in all {
            let log = admin.status_log(c).await.unwrap();
            if log.iter().any(|e| e.work == "auto" && e.generation == 2) {
                n += 1;
            }
        }
        n
    };
    assert_eq!(
        history, 1,
        "the bad generation went further than the budget allowed"
    );
    for a in agents {
        a.0.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_give_clusters_different_images_and_placement_explains_itself() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(4, true, Default::default()).await.unwrap();
    let all = ["eu1", "us1", "us2", "us3"];
    let agents: Vec<_> = all.iter().map(|n| agent(&hub, d, n, &token)).collect();
    wait_for(&admin, WAIT, "4 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();

    let web = work_from(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "web"},
        "spec": {
            "placement": {"clusters": ["eu1", "us1"]},
            "manifests": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}],
            "overrides": [{"clusterSelector": {"matchLabels": {"site": "eu1"}}, "image": {"registry": "mirror.eu.example"}, "replicas": 1}]
        }
    }));
    admin.apply_work(&web).await.unwrap();
    wait_applied(&admin, "web", 1, 2).await;
    let eu = std::fs::read_to_string(manifests_dir(d, "eu1").join("tether-web.yaml")).unwrap();
    let us = std::fs::read_to_string(manifests_dir(d, "us1").join("tether-web.yaml")).unwrap();
    assert!(
        eu.contains("image: \"mirror.eu.example/nginx:1.27\"") && eu.contains("replicas: 1"),
        "{eu}"
    );
    assert!(
        us.contains("image: \"nginx:1.27\"") && us.contains("replicas: 3"),
        "{us}"
    );
    let rendered = admin.rendered("web", "eu1").await.unwrap();
    assert_eq!(
        rendered[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "mirror.eu.example/nginx:1.27"
    );

    // maxClusters: a stable choice of 2 of the 3 us clusters, with reasons for every cluster.
    let pick = work_from(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "pick"},
        "spec": {"placement": {"selector": {"matchExpressions": [{"key": "site", "operator": "In", "values": ["us1", "us2", "us3"]}]}, "maxClusters": 2},
                 "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}}]}
    }));
    admin.apply_work(&pick).await.unwrap();
    wait_applied(&admin, "pick", 1, 2).await;
    let choices = admin.placement("pick").await.unwrap();
    assert_eq!(choices.iter().filter(|c| c.selected).count(), 2);
    assert!(
        choices
            .iter()
            .any(|c| !c.selected && c.reason.contains("maxClusters")),
        "{choices:?}"
    );
    assert!(
        choices
            .iter()
            .any(|c| c.cluster == "eu1"
                && c.reason
                    == "spec.placement.selector matchExpressions[0] site In [us1, us2, us3]: the cluster has site=eu1"),
        "{choices:?}"
    );
    // Re-applying an unrelated work does not move it.
    let before: Vec<_> = choices
        .iter()
        .filter(|c| c.selected)
        .map(|c| c.cluster.clone())
        .collect();
    admin
        .apply_work(&config_work("other", everywhere(), &["x"], "y"))
        .await
        .unwrap();
    let after: Vec<_> = admin
        .placement("pick")
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.selected)
        .map(|c| c.cluster)
        .collect();
    assert_eq!(before, after);

    // A patch that cannot apply is refused at apply time.
    let mut bad = web.clone();
    bad.spec.overrides[0].patches =
        vec![
            serde_json::from_value(json!({"operations": [{"op": "remove", "path": "/nope"}]}))
                .unwrap(),
        ];
    let err = admin.apply_work(&bad).await.unwrap_err().to_string();
    assert!(err.contains("overrides[0]"), "{err}");
    for a in agents {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_divided_by_weight_and_spread_over_zones() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(4, true, Default::default()).await.unwrap();
    let zones = [
        ("z1a", "z1", "large"),
        ("z1b", "z1", "small"),
        ("z2a", "z2", "small"),
        ("z3a", "z3", "small"),
    ];
    let agents: Vec<_> = zones
        .iter()
        .map(|(n, zone, size)| {
            let mut s = spec(&hub, d, n, &token);
            s.labels.insert("zone".into(), zone.to_string());
            s.labels.insert("size".into(), size.to_string());
            s.labels.insert("kind".into(), "store".into());
            tether_sim::fleet::LocalAgent::spawn(s)
        })
        .collect();
    let all: Vec<&str> = zones.iter().map(|z| z.0).collect();
    wait_for(&admin, WAIT, "4 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/replicas.yaml"),
    )
    .unwrap();
    let doc = tether_hub::parse_work_documents(&text).unwrap().remove(0);
    admin.apply_work(&doc).await.unwrap();
    let detail = wait_applied(&admin, "inference", 1, 3).await;
    let chosen: Vec<&str> = detail
        .clusters
        .iter()
        .filter(|c| c.targeted)
        .map(|c| c.cluster.as_str())
        .collect();
    let zones_chosen: std::collections::BTreeSet<_> = chosen.iter().map(|c| &c[..2]).collect();
    assert_eq!(zones_chosen.len(), 3, "not spread over zones: {chosen:?}");
    let mut total = 0;
    for c in &chosen {
        let r = admin.rendered("inference", c).await.unwrap();
        let n = r[0]["spec"]["replicas"].as_u64().unwrap();
        if *c == "z1a" {
            assert_eq!(n, 6, "the large store weighs double");
        }
        total += n;
        let file =
            std::fs::read_to_string(manifests_dir(d, c).join("tether-inference.yaml")).unwrap();
        assert!(file.contains(&format!("replicas: {n}")), "{file}");
    }
    assert_eq!(total, 12);
    for a in agents {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_outside_its_maintenance_window_is_not_updated() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    // tether.dev/ labels are reserved: only an administrator sets them, through the token.
    let window = hub
        .token(
            1,
            true,
            [(
                "tether.dev/maintenance-window".to_string(),
                "newyear".to_string(),
            )]
            .into(),
        )
        .await
        .unwrap();
    let agents = vec![
        agent(&hub, d, "closed", &window),
        agent(&hub, d, "open", &token),
    ];
    wait_for(
        &admin,
        WAIT,
        "2 Ready",
        all_in_state(&names(&["closed", "open"]), "Ready"),
    )
    .await
    .unwrap();
    // A window that opens for one minute on January 1st: closed for the duration of the test
    // (unless it runs at midnight on New Year's Day).
    let w = work_from(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "fw"},
        "spec": {"targets": {"selector": {}},
                 "rollout": {"maintenanceWindows": {"newyear": {"cron": "0 0 1 1 *", "durationMinutes": 1}}},
                 "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fw"}}]}
    }));
    admin.apply_work(&w).await.unwrap();
    eventually_applied_on(&admin, "fw", "open").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let detail = admin.work("fw").await.unwrap();
    let row = detail
        .clusters
        .iter()
        .find(|c| c.cluster == "closed")
        .unwrap();
    assert!(
        row.targeted && row.delivered_generation.is_none(),
        "{row:?}"
    );
    assert!(std::fs::read_to_string(manifests_dir(d, "closed").join("tether-fw.yaml")).is_err());
    // A bad cron is refused at apply.
    let mut bad = w.clone();
    bad.spec
        .rollout
        .as_mut()
        .unwrap()
        .maintenance_windows
        .get_mut("newyear")
        .unwrap()
        .cron = "every tuesday".into();
    let err = admin.apply_work(&bad).await.unwrap_err().to_string();
    assert!(err.contains("maintenanceWindows.newyear"), "{err}");
    for a in agents {
        a.stop().await.unwrap();
    }
}

async fn eventually_applied_on(admin: &tether_hub::AdminClient, work: &str, cluster: &str) {
    let start = Instant::now();
    loop {
        if let Ok(d) = admin.work(work).await {
            if d.clusters
                .iter()
                .any(|c| c.cluster == cluster && c.applied_generation.is_some())
            {
                return;
            }
        }
        assert!(start.elapsed() < WAIT, "{work} never applied on {cluster}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `rollout pause` is the operator's: it holds across later applies until `resume`, for a
/// plain (all-at-once) work too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_across_applies_until_resume() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let agents: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|n| memory_agent(&hub, d, n, &token))
        .collect();
    let all = json!({});
    admin
        .apply_work(&configmap_work("held", "v1", all.clone(), json!([])))
        .await
        .unwrap();
    wait_applied(&admin, "held", 1, 2).await;

    admin.rollout_action("held", "pause", None).await.unwrap();
    for v in ["v2", "v3"] {
        admin
            .apply_work(&configmap_work("held", v, all.clone(), json!([])))
            .await
            .unwrap();
    }
    let r = rollout_until(&admin, "held", |r| r.generation == 3).await;
    assert!(r.paused, "the pause must survive two applies: {r:?}");
    assert_eq!(r.phase, tether_hub::api::RolloutPhase::Paused, "{r:?}");
    assert_eq!(r.admitted, 0, "{r:?}");
    // Give delivery every chance to (wrongly) send generation 3.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (_, mem) in &agents {
        let objects = mem.objects();
        assert!(
            objects.values().all(|o| o["data"]["v"] == "v1"),
            "a paused work was delivered: {objects:?}"
        );
    }

    admin.rollout_action("held", "resume", None).await.unwrap();
    wait_applied(&admin, "held", 3, 2).await;
    for (_, mem) in &agents {
        assert!(mem.objects().values().all(|o| o["data"]["v"] == "v3"));
    }

    // The history lists every generation; an undo's generation says what it restores.
    admin.rollout_action("held", "undo", Some(1)).await.unwrap();
    wait_applied(&admin, "held", 4, 2).await;
    let history = admin.history("held").await.unwrap();
    let rows: Vec<_> = history
        .iter()
        .map(|r| (r.generation, r.restores, r.current))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, None, false),
            (2, None, false),
            (3, None, false),
            (4, Some(1), true)
        ]
    );
    for (a, _) in agents {
        a.stop().await.unwrap();
    }
}
