//! End-to-end failover: a work moves off a stopped cluster, and the stale copy is removed only
//! after the replacement is available; a singleton fences itself when the hub is unreachable.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tether_sim::fleet::{all_in_state, wait_for};

/// A singleton on any one cluster, fencing after 1 s without confirmed contact.
fn leader_anywhere() -> tether_protocol::work::WorkDocument {
    work_from(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "leader"},
        "spec": {"placement": {"selector": {}},
                 "failover": {"mode": "Singleton", "fenceAfterSeconds": 1, "clockSkewSeconds": 1},
                 "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "leader"}}]}
    }))
}

async fn holder(admin: &tether_hub::AdminClient, work: &str, generation: u64) -> String {
    let start = Instant::now();
    loop {
        if let Ok(d) = admin.work(work).await {
            let applied: Vec<_> = d
                .clusters
                .iter()
                .filter(|c| c.targeted && c.applied_generation == Some(generation))
                .map(|c| c.cluster.clone())
                .collect();
            if applied.len() == 1 && d.summary.targeted == 1 {
                return applied[0].clone();
            }
        }
        assert!(start.elapsed() < WAIT, "no single holder of {work}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_the_work_and_cleans_the_stale_copy_only_after_the_replacement_is_up() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Default::default()).await.unwrap();
    let all = ["p1", "p2", "p3"];
    let mut agents: std::collections::BTreeMap<String, _> = all
        .iter()
        .map(|n| (n.to_string(), memory_agent(&hub, d, n, &token)))
        .collect();
    wait_for(&admin, WAIT, "3 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    admin
        .apply_work(&work_from(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "svc"},
            "spec": {"placement": {"selector": {}, "maxClusters": 1},
                     "failover": {"mode": "Multi", "tolerationSeconds": 1},
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "svc"}}]}
        })))
        .await
        .unwrap();
    let first = holder(&admin, "svc", 1).await;
    let (agent, mem) = agents.remove(&first).unwrap();
    agent.stop().await.unwrap();
    // Its copy keeps running in the cluster while the agent is gone.
    assert_eq!(mem.objects().len(), 1);

    // After tolerationSeconds the slot moves.
    let second = holder(&admin, "svc", 1).await;
    let second = if second == first {
        // Still the old one for a moment: wait for the move.
        let start = Instant::now();
        loop {
            let h = holder(&admin, "svc", 1).await;
            if h != first {
                break h;
            }
            assert!(start.elapsed() < WAIT, "work never moved off {first}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        second
    };
    let placement = admin.placement("svc").await.unwrap();
    let old = placement.iter().find(|c| c.cluster == first).unwrap();
    assert!(
        !old.selected && old.reason.contains("tainted unreachable"),
        "{old:?}"
    );

    // The old cluster returns: it does not take the slot back, and its stale copy is removed.
    let again = memory_agent_again(&hub, d, &first, &token, &mem);
    eventually("stale copy removed", || mem.objects().is_empty()).await;
    assert_eq!(
        holder(&admin, "svc", 1).await,
        second,
        "the slot flapped back"
    );
    again.stop().await.unwrap();
    for (_, (a, _)) in agents {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_fences_itself_while_the_hub_is_unreachable_and_resumes_after() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let all = ["q1", "q2"];
    let agents: Vec<_> = all
        .iter()
        .map(|n| memory_agent(&hub, d, n, &token))
        .collect();
    wait_for(&admin, WAIT, "2 Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    admin.apply_work(&leader_anywhere()).await.unwrap();
    let who = holder(&admin, "leader", 1).await;
    let mem = &agents
        .iter()
        .zip(all)
        .find(|(_, n)| *n == who)
        .unwrap()
        .0
         .1;
    let other = &agents
        .iter()
        .zip(all)
        .find(|(_, n)| *n != who)
        .unwrap()
        .0
         .1;
    assert_eq!(mem.objects().len(), 1);
    assert!(other.objects().is_empty(), "singleton on two clusters");

    // Hub gone: after fenceAfter the holder removes its copy by itself. Counted from before the
    // stop (the hub answers nothing after it starts): a shutdown slowed by a loaded machine
    // must not make a correct fence look early.
    let t0 = Instant::now();
    hub.stop().await;
    eventually("holder fences", || mem.objects().is_empty()).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "fenced too early: {:?}",
        t0.elapsed()
    );
    assert!(other.objects().is_empty());

    // Hub back: it keeps the same holder (a restart is not an outage of the cluster) and
    // delivers again, which lifts the fence.
    hub.restart().await.unwrap();
    eventually("holder resumes", || mem.objects().len() == 1).await;
    assert!(
        other.objects().is_empty(),
        "singleton on two clusters after the hub restart"
    );
    let d2 = admin.work("leader").await.unwrap();
    assert_eq!(d2.summary.targeted, 1);
    for a in agents {
        a.0.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_singleton_move_removes_the_old_copy_before_the_new_one_starts() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let (a, on_a) = memory_agent(&hub, d, "m1", &token);
    let (b, on_b) = memory_agent(&hub, d, "m2", &token);
    wait_for(
        &admin,
        WAIT,
        "2 Ready",
        all_in_state(&names(&["m1", "m2"]), "Ready"),
    )
    .await
    .unwrap();
    let on = |cluster: &str| {
        work_from(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": "leader"},
            "spec": {"targets": {"clusters": [cluster]},
                     "failover": {"mode": "Singleton", "fenceAfterSeconds": 5, "clockSkewSeconds": 1},
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "leader"}}]}
        }))
    };
    admin.apply_work(&on("m1")).await.unwrap();
    eventually("m1 runs it", || on_a.objects().len() == 1).await;

    // Both clusters stay reachable: the old copy must be gone before the new one starts.
    admin.apply_work(&on("m2")).await.unwrap();
    let start = Instant::now();
    loop {
        let (old, new) = (on_a.objects().len(), on_b.objects().len());
        assert!(
            old == 0 || new == 0,
            "the singleton runs on m1 and m2 at once"
        );
        if old == 0 && new == 1 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the move did not finish: m1 {old}, m2 {new}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The holder of a singleton keeps it while connected, for many times its fenceAfter: its
/// heartbeats are the confirmed kind, so its contact with the hub stays fresh. (With plain
/// beats, acknowledged by QUIC alone, it would fence itself one second in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_singleton_holder_never_fences() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let (agent, mem) = memory_agent(&hub, d, "keeper", &token);
    wait_for(
        &admin,
        WAIT,
        "Ready",
        all_in_state(&names(&["keeper"]), "Ready"),
    )
    .await
    .unwrap();
    admin.apply_work(&leader_anywhere()).await.unwrap();
    assert_eq!(holder(&admin, "leader", 1).await, "keeper");
    eventually("the copy runs", || mem.objects().len() == 1).await;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            mem.objects().len(),
            1,
            "a connected holder fenced its singleton"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await.unwrap();
}
