//! Deleting a work must delete only what Tether created. An object that already existed when
//! the work first applied it (here the cluster's own `coredns` ConfigMap) is adopted: on
//! removal, and when it leaves the work, it is released (Tether's label, annotation and field
//! manager go, the object and its values stay), not deleted. The record of what was adopted
//! lives in the agent's store, so it survives an agent restart between apply and removal.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tether_agent::desired::{accept_removal, accept_update};
use tether_agent::executor::kube::{
    KubeExecutor, FIELD_MANAGER, GENERATION_ANNOTATION, WORK_LABEL,
};
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, WorkRemove, WorkUpdate};
use tether_store::Store;

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "kube-system"}, "data": data})
}

fn update(generation: u64, manifests: Vec<Value>) -> WorkUpdate {
    let packed = bundle::pack(&manifests).unwrap();
    WorkUpdate {
        name: "dns".into(),
        generation,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: None,
    }
}

fn reconciler(server: &FakeApiServer, store: &Arc<Store>) -> Reconciler<KubeExecutor> {
    // A fresh executor each time: nothing is remembered in memory across "restarts".
    let exec = KubeExecutor::from_config(server.kube_config()).expect("executor");
    Reconciler::new(
        store.clone(),
        Arc::new(exec),
        Signals::default(),
        Duration::from_secs(3600),
    )
}

fn assert_released(server: &FakeApiServer, name: &str, key: &str, value: &str) {
    let cm = server
        .get("v1", "ConfigMap", Some("kube-system"), name)
        .unwrap_or_else(|| panic!("adopted {name} was deleted"));
    assert_eq!(cm["data"][key], value, "{cm}");
    assert!(
        cm.pointer(&format!(
            "/metadata/labels/{}",
            WORK_LABEL.replace('/', "~1")
        ))
        .is_none(),
        "{cm}"
    );
    assert!(
        cm.pointer(&format!(
            "/metadata/annotations/{}",
            GENERATION_ANNOTATION.replace('/', "~1")
        ))
        .is_none(),
        "{cm}"
    );
    let owners = server.owners(
        "v1",
        "ConfigMap",
        Some("kube-system"),
        name,
        &format!(".data.{key}"),
    );
    assert!(!owners.iter().any(|o| o == FIELD_MANAGER), "{owners:?}");
}

#[tokio::test]
async fn removing_a_work_releases_what_it_adopted_and_deletes_what_it_created() {
    let server = FakeApiServer::start().await;
    server.create(
        "v1",
        "Namespace",
        None,
        json!({"metadata": {"name": "kube-system"}}),
    );
    server.create(
        "v1",
        "ConfigMap",
        Some("kube-system"),
        json!({"metadata": {"name": "coredns"}, "data": {"Corefile": ".:53 {}"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());

    accept_update(
        &store,
        update(
            1,
            vec![
                config_map("coredns", json!({"Corefile": ".:53 {}", "extra": "x"})),
                config_map("dns-settings", json!({"k": "v"})),
            ],
        ),
        None,
    )
    .unwrap();
    reconciler(&server, &store).pass().await.unwrap();
    let cm = server
        .get("v1", "ConfigMap", Some("kube-system"), "coredns")
        .unwrap();
    assert_eq!(
        cm["data"]["extra"], "x",
        "the work applied to the adopted object"
    );

    // Agent restarts, then the hub deletes the work.
    accept_removal(
        &store,
        WorkRemove {
            name: "dns".into(),
            orphan: false,
        },
    )
    .unwrap();
    reconciler(&server, &store).pass().await.unwrap();

    assert!(
        server
            .get("v1", "ConfigMap", Some("kube-system"), "dns-settings")
            .is_none(),
        "created by Tether: deleted"
    );
    assert_released(&server, "coredns", "Corefile", ".:53 {}");
}

#[tokio::test]
async fn an_adopted_object_that_leaves_the_work_is_released_not_pruned() {
    let server = FakeApiServer::start().await;
    server.create(
        "v1",
        "Namespace",
        None,
        json!({"metadata": {"name": "kube-system"}}),
    );
    server.create(
        "v1",
        "ConfigMap",
        Some("kube-system"),
        json!({"metadata": {"name": "coredns"}, "data": {"Corefile": ".:53 {}"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    accept_update(
        &store,
        update(
            1,
            vec![
                config_map("coredns", json!({"Corefile": ".:53 {}"})),
                config_map("dns-settings", json!({"k": "v"})),
            ],
        ),
        None,
    )
    .unwrap();
    reconciler(&server, &store).pass().await.unwrap();

    accept_update(
        &store,
        update(2, vec![config_map("dns-settings", json!({"k": "v"}))]),
        None,
    )
    .unwrap();
    reconciler(&server, &store).pass().await.unwrap();
    assert_released(&server, "coredns", "Corefile", ".:53 {}");
    assert!(server
        .get("v1", "ConfigMap", Some("kube-system"), "dns-settings")
        .is_some());
}

// ---- the executor alone ----------------------------------------------------------------------

use tether_agent::executor::kube::ON_REMOVAL_ANNOTATION;
use tether_agent::executor::{Executor, Managed};
use tether_protocol::work::ObjectRef;
use tether_store::agent::DesiredWork;

fn work(generation: u64, manifests: Vec<Value>) -> DesiredWork {
    DesiredWork {
        name: "dns".into(),
        generation,
        hash: format!("hash-{generation}"),
        force_conflicts: false,
        manifests,
        removal: None,
        fence_after_ms: None,
        fenced: false,
    }
}

fn cm_ref(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("kube-system".into()),
        name: name.into(),
    }
}

async fn cluster_with_coredns() -> (FakeApiServer, KubeExecutor) {
    let server = FakeApiServer::start().await;
    server.create(
        "v1",
        "Namespace",
        None,
        json!({"metadata": {"name": "kube-system"}}),
    );
    server.create(
        "v1",
        "ConfigMap",
        Some("kube-system"),
        json!({"metadata": {"name": "coredns"}, "data": {"Corefile": ".:53 {}"}}),
    );
    let exec = KubeExecutor::from_config(server.kube_config()).expect("executor");
    (server, exec)
}

#[tokio::test]
async fn the_report_says_what_was_adopted_and_asking_for_deletion_deletes_it() {
    let (server, exec) = cluster_with_coredns().await;
    let mut coredns = config_map("coredns", json!({"Corefile": ".:53 {}"}));
    let r = exec
        .apply(
            &work(1, vec![coredns.clone(), config_map("mine", json!({}))]),
            &Managed::default(),
        )
        .await
        .expect("apply");
    assert_eq!(
        r.adopted.iter().cloned().collect::<Vec<_>>(),
        vec![cm_ref("coredns")]
    );
    assert_eq!(r.inventory.len(), 2);
    // Known objects are not looked up again: the steady state stays PATCH only.
    server.clear_requests();
    let again = exec
        .apply(
            &work(1, vec![coredns.clone(), config_map("mine", json!({}))]),
            &r.managed(),
        )
        .await
        .expect("apply again");
    assert_eq!(again.adopted, r.adopted);
    assert!(
        server.requests().iter().all(|q| q.starts_with("PATCH")),
        "{:?}",
        server.requests()
    );

    coredns["metadata"]["annotations"] = json!({ON_REMOVAL_ANNOTATION: "delete"});
    let r = exec
        .apply(
            &work(2, vec![coredns, config_map("mine", json!({}))]),
            &again.managed(),
        )
        .await
        .expect("apply with the annotation");
    exec.remove("dns", &r.managed(), false)
        .await
        .expect("remove");
    assert!(server
        .get("v1", "ConfigMap", Some("kube-system"), "coredns")
        .is_none());
    assert!(server
        .get("v1", "ConfigMap", Some("kube-system"), "mine")
        .is_none());
}

#[tokio::test]
async fn asking_for_release_keeps_an_object_an_old_inventory_calls_created() {
    let (server, exec) = cluster_with_coredns().await;
    let mut coredns = config_map("coredns", json!({"Corefile": ".:53 {}"}));
    coredns["metadata"]["annotations"] = json!({ON_REMOVAL_ANNOTATION: "release"});
    // An inventory from an agent before adoption records: coredns reads as created.
    let legacy = Managed::created(vec![cm_ref("coredns")]);
    let r = exec
        .apply(&work(1, vec![coredns]), &legacy)
        .await
        .expect("apply");
    assert!(r.adopted.is_empty(), "an old inventory says created");
    exec.remove("dns", &r.managed(), false)
        .await
        .expect("remove");
    assert_released(&server, "coredns", "Corefile", ".:53 {}");
}

#[tokio::test]
async fn an_adoption_seen_in_a_failed_pass_is_not_forgotten() {
    let (server, exec) = cluster_with_coredns().await;
    let r = exec
        .apply(
            &work(1, vec![config_map("mine", json!({}))]),
            &Managed::default(),
        )
        .await
        .expect("apply v1");
    // v2 adopts coredns, but another manifest fails: the pass reports nothing.
    let broken = json!({"apiVersion": "v1", "kind": "NoSuchKind", "metadata": {"name": "x"}});
    exec.apply(
        &work(
            2,
            vec![
                config_map("mine", json!({})),
                config_map("coredns", json!({"Corefile": ".:53 {}"})),
                broken,
            ],
        ),
        &r.managed(),
    )
    .await
    .expect_err("one manifest is invalid");
    // Removal with what was last recorded finds coredns by its label (same kind and
    // namespace as `mine`): released, not deleted.
    exec.remove("dns", &r.managed(), false)
        .await
        .expect("remove");
    assert!(server
        .get("v1", "ConfigMap", Some("kube-system"), "mine")
        .is_none());
    assert_released(&server, "coredns", "Corefile", ".:53 {}");
}

#[tokio::test]
async fn orphaning_gives_up_field_ownership_too() {
    let (server, exec) = cluster_with_coredns().await;
    let r = exec
        .apply(
            &work(1, vec![config_map("mine", json!({"k": "v"}))]),
            &Managed::default(),
        )
        .await
        .expect("apply");
    assert!(r.adopted.is_empty());
    exec.remove("dns", &r.managed(), true)
        .await
        .expect("orphan");
    assert_released(&server, "mine", "k", "v");
}

// ---- the test server's rules for managedFields ---------------------------------------------

#[tokio::test]
async fn test_server_managed_fields_follow_the_documented_update_rules() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    let server = FakeApiServer::start().await;
    server.create(
        "v1",
        "ConfigMap",
        Some("default"),
        json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
    );
    server
        .apply_as(
            "helm",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "default"}, "data": {"b": "2"}}),
        )
        .expect("helm applies");
    let client = kube::Client::try_from(server.kube_config()).expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = api.get("c").await.expect("get");
    let entries = cm.metadata.managed_fields.clone().unwrap_or_default();
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("helm".into(), "Apply".into()),
            ("kubectl-create".into(), "Update".into())
        ]
    );
    let owners = |field: &str| server.owners("v1", "ConfigMap", Some("default"), "c", field);
    let params = PatchParams::default();

    // An empty list changes nothing.
    api.patch(
        "c",
        &params,
        &Patch::Merge(json!({"metadata": {"managedFields": []}})),
    )
    .await
    .expect("empty list");
    assert_eq!(owners(".data.b"), vec!["helm"]);

    // A stale resourceVersion is refused with 409.
    let stale = json!({"metadata": {"resourceVersion": "1", "managedFields": [entries[1]]}});
    let err = api
        .patch("c", &params, &Patch::Merge(stale))
        .await
        .expect_err("stale");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(owners(".data.b"), vec!["helm"]);

    // Leaving a manager out releases its fields; the values stay.
    let rv = api.get("c").await.expect("get").metadata.resource_version;
    let keep = json!({"metadata": {"resourceVersion": rv, "managedFields": [entries[1]]}});
    let cm = api
        .patch("c", &params, &Patch::Merge(keep))
        .await
        .expect("release helm");
    assert!(owners(".data.b").is_empty());
    assert_eq!(owners(".data.a"), vec!["kubectl-create"]);
    assert_eq!(
        cm.data.unwrap_or_default().get("b").map(String::as_str),
        Some("2")
    );

    // `[{}]` clears every manager, and that is a write (a new resourceVersion).
    let rv = api.get("c").await.expect("get").metadata.resource_version;
    let cleared = api
        .patch(
            "c",
            &params,
            &Patch::Merge(json!({"metadata": {"managedFields": [{}]}})),
        )
        .await
        .expect("clear");
    assert_ne!(cleared.metadata.resource_version, rv);
    assert!(owners(".data.a").is_empty());
    assert!(api
        .get("c")
        .await
        .expect("get")
        .metadata
        .managed_fields
        .is_none());
}
