//! Self-reported facts are claims: an agent lying about its arch or capacity in heartbeats
//! cannot draw works meant for other clusters, every change is audited, and an admin can pin
//! what placement trusts. End to end, with a hostile raw client.

mod common;
mod peer;

use common::*;
use peer::*;
use std::time::Duration;
use tether_hub::api::{AuditFilter, PinFactsRequest};
use tether_protocol::{Facts, Heartbeat, Labels, Message};
use tether_sim::fleet::{all_in_state, wait_for};
use tether_transport::framed::request;

/// An arch no test machine has, so only a lie can claim it.
const FOREIGN_ARCH: &str = "riscv64";

fn lying_facts() -> Facts {
    Facts {
        arch: FOREIGN_ARCH.into(),
        os: "linux".into(),
        cpus: u32::MAX,
        memory_bytes: u64::MAX,
        agent_version: "0.1.0".into(),
        hostname: "evil".into(),
        kubernetes_version: None,
        node_count: None,
    }
}

fn replicas_work(name: &str) -> tether_protocol::work::WorkDocument {
    work_from(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Work",
        "metadata": {"name": name},
        "spec": {
            "placement": {"selector": {}, "replicas": {"total": 12, "divide": "capacity"}},
            "manifests": [{
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
            }]
        }
    }))
}

fn arch_work(name: &str) -> tether_protocol::work::WorkDocument {
    work_from(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Work",
        "metadata": {"name": name},
        "spec": {
            "placement": {"selector": {"matchLabels": {"tether.dev/arch": FOREIGN_ARCH}}},
            "manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}}]
        }
    }))
}

async fn replicas_of(admin: &tether_hub::AdminClient, work: &str, c: &str) -> u64 {
    let r = admin.rendered(work, c).await.unwrap();
    r[0]["spec"]["replicas"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_heartbeats_neither_steal_replicas_nor_attract_other_archs_work() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Labels::new()).await.unwrap();
    let evil = joined_identity(&hub, dir.path(), "evil", &token).await;
    let honest: Vec<_> = ["honest-a", "honest-b"]
        .iter()
        .map(|n| agent(&hub, dir.path(), n, &token))
        .collect();
    let (_ep, conn) = session(&hub, &evil).await;
    // Keep the liar Ready, claiming a foreign arch and every cpu there is.
    let beats = {
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                let hb = Message::Heartbeat(Heartbeat {
                    facts: lying_facts(),
                    conditions: vec![],
                    sent_at_ms: tether_hub::util::now_ms(),
                    cluster: None,
                    outbox_depth: 0,
                });
                if request(&conn, &hb, limits()).await.is_err() {
                    return;
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    };
    wait_for(
        &admin,
        WAIT,
        "3 Ready",
        all_in_state(&names(&["evil", "honest-a", "honest-b"]), "Ready"),
    )
    .await
    .unwrap();
    let mut shown = admin.cluster("evil").await.unwrap();
    for _ in 0..100 {
        if shown.facts.arch == FOREIGN_ARCH {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = admin.cluster("evil").await.unwrap();
    }
    assert_eq!(
        shown.facts.arch, FOREIGN_ARCH,
        "the report is shown as reported"
    );
    assert_eq!(shown.facts.cpus, 4096, "absurd cpu counts are clamped");
    assert_ne!(
        shown.pins.arch.as_deref(),
        Some(FOREIGN_ARCH),
        "approval pinned the arch the approver saw"
    );
    let (events, _) = admin
        .audit_search(
            &AuditFilter {
                kind: Some("facts_changed".into()),
                cluster: Some("evil".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.detail.contains(FOREIGN_ARCH)),
        "{events:#?}"
    );

    admin.apply_work(&replicas_work("cap")).await.unwrap();
    admin.apply_work(&arch_work("foreign")).await.unwrap();
    let honest_cpus = u64::from(admin.cluster("honest-a").await.unwrap().facts.cpus);
    eventually("cap is placed on all three", || {
        hub.running()
            .state
            .decisions
            .snapshot()
            .get("cap")
            .is_some_and(|d| d.selected.len() == 3)
    })
    .await;
    let liar = replicas_of(&admin, "cap", "evil").await;
    let a = replicas_of(&admin, "cap", "honest-a").await;
    let b = replicas_of(&admin, "cap", "honest-b").await;
    assert_eq!(liar + a + b, 12);
    // Two honest clusters of equal size and a liar capped at 4x their median.
    let fair = 12 * honest_cpus / (2 * honest_cpus + 4 * honest_cpus);
    assert!(
        a >= fair && b >= fair,
        "honest clusters got {a} and {b} of 12 (liar {liar})"
    );
    let placement = admin.placement("foreign").await.unwrap();
    assert!(
        placement.iter().all(|c| !c.selected),
        "a claimed arch drew a work: {placement:#?}"
    );

    // An admin who has checked the cluster pins what it reported; placement follows the pins.
    let pinned = admin
        .pin_facts(
            "evil",
            &PinFactsRequest {
                reported: true,
                cpus: Some(u32::try_from(honest_cpus).unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pinned.pins.arch.as_deref(), Some(FOREIGN_ARCH));
    eventually("the pinned arch selects evil", || {
        hub.running()
            .state
            .decisions
            .snapshot()
            .get("foreign")
            .is_some_and(|d| d.selected.contains_key("evil"))
    })
    .await;
    let mut even = false;
    for _ in 0..100 {
        if replicas_of(&admin, "cap", "evil").await == 4 {
            even = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(even, "a pinned cpu count is what capacity divides by");
    let refused = admin
        .pin_facts(
            "evil",
            &PinFactsRequest {
                unpin: vec!["hostname".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("pinnable"), "{refused:#}");

    beats.abort();
    for a in honest {
        a.stop().await.unwrap();
    }
}
