//! The kube executor against the test API server (tests/support/fake_apiserver.rs): create,
//! update, idempotence, drift, conflicts and force, pruning, removal and orphaning, readiness,
//! discovery errors, an unreachable or silent server, and a reconcile loop end to end.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::kube::{KubeExecutor, GENERATION_ANNOTATION, WORK_LABEL};
use tether_agent::executor::{ApplyReport, ExecError, ExecErrorKind, Executor, Managed};
use tether_agent::reconcile::{status_for, Reconciler, Signals};
use tether_protocol::work::ObjectRef;
use tether_protocol::WorkPhase;
use tether_store::agent::{DesiredWork, Removal, APPLIED, DESIRED};

fn work(name: &str, generation: u64, manifests: Vec<Value>) -> DesiredWork {
    DesiredWork {
        name: name.into(),
        generation,
        hash: format!("hash-{generation}"),
        force_conflicts: false,
        manifests,
        removal: None,
        fence_after_ms: None,
        fenced: false,
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn config_map(ns: Option<&str>, name: &str, data: Value) -> Value {
    let mut m =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
    if let Some(ns) = ns {
        m["metadata"]["namespace"] = json!(ns);
    }
    m
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    })
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})
}

fn oref(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: ns.map(str::to_string),
        name: name.into(),
    }
}

async fn setup() -> (FakeApiServer, KubeExecutor) {
    let server = FakeApiServer::start().await;
    let exec = KubeExecutor::from_config(server.kube_config()).expect("executor");
    (server, exec)
}

fn condition<'a>(report: &'a ApplyReport, kind: &str) -> &'a tether_protocol::Condition {
    report
        .conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {:?}", report.conditions))
}

fn label(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(WORK_LABEL))
        .and_then(Value::as_str)
}

#[tokio::test]
async fn apply_creates_objects_with_ownership_label_and_generation() {
    let (server, exec) = setup().await;
    // The Namespace comes last in the manifests but must be applied first.
    let w = work(
        "shop",
        3,
        vec![
            config_map(Some("shop"), "settings", json!({"color": "blue"})),
            service("web"),
            namespace("shop"),
        ],
    );
    let report = exec.apply(&w, &Managed::default()).await.expect("apply");
    assert_eq!(
        report.inventory,
        vec![
            oref("v1", "ConfigMap", Some("shop"), "settings"),
            // No namespace in the manifest: the client's default namespace.
            oref("v1", "Service", Some("default"), "web"),
            oref("v1", "Namespace", None, "shop"),
        ]
    );
    assert!(report.readiness_known);
    assert_eq!(condition(&report, "Applied").status, "True");
    assert_eq!(condition(&report, "Available").status, "True");
    assert!(report.resources.iter().all(|r| r.ready.is_none()));

    for (api_version, kind, ns, name) in [
        ("v1", "ConfigMap", Some("shop"), "settings"),
        ("v1", "Service", Some("default"), "web"),
        ("v1", "Namespace", None, "shop"),
    ] {
        let obj = server
            .get(api_version, kind, ns, name)
            .unwrap_or_else(|| panic!("{kind} {name} missing"));
        assert_eq!(label(&obj), Some("shop"), "{kind} {name}");
        assert_eq!(obj["metadata"]["annotations"][GENERATION_ANNOTATION], "3");
        assert_eq!(
            server.owners(
                api_version,
                kind,
                ns,
                name,
                &format!(".metadata.labels.{WORK_LABEL}")
            ),
            ["tether-agent"]
        );
    }
    let cm = server
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .unwrap();
    assert_eq!(cm["data"]["color"], "blue");

    let patches: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect();
    assert!(
        patches[0].starts_with("PATCH /api/v1/namespaces/shop?"),
        "{patches:?}"
    );
    assert!(
        patches
            .iter()
            .all(|p| p.contains("fieldManager=tether-agent") && !p.contains("force")),
        "{patches:?}"
    );

    // An update changes the object and the generation annotation.
    let w2 = work(
        "shop",
        4,
        vec![
            namespace("shop"),
            config_map(Some("shop"), "settings", json!({"color": "red"})),
        ],
    );
    exec.apply(&w2, &report.managed()).await.expect("update");
    let cm = server
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .unwrap();
    assert_eq!(cm["data"]["color"], "red");
    assert_eq!(cm["metadata"]["annotations"][GENERATION_ANNOTATION], "4");
}

#[tokio::test]
async fn reapply_is_idempotent() {
    let (server, exec) = setup().await;
    let w = work(
        "web",
        1,
        vec![
            config_map(None, "a", json!({"k": "v"})),
            deployment("default", "web", 2),
        ],
    );
    let first = exec
        .apply(&w, &Managed::default())
        .await
        .expect("first apply");
    let writes = server.writes();
    let rv = server
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap()["metadata"]["resourceVersion"]
        .clone();
    server.clear_requests();
    let second = exec
        .apply(&w, &first.managed())
        .await
        .expect("second apply");
    assert_eq!(first, second);
    assert_eq!(
        server.writes(),
        writes,
        "a second identical apply changed something"
    );
    assert_eq!(
        server
            .get("apps/v1", "Deployment", Some("default"), "web")
            .unwrap()["metadata"]["resourceVersion"],
        rv
    );
    // Discovery is cached: the second pass is two PATCHes and nothing else.
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.starts_with("PATCH")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn drift_is_repaired_by_the_next_apply() {
    let (server, exec) = setup().await;
    let w = work(
        "web",
        1,
        vec![config_map(None, "a", json!({"k": "v", "other": "x"}))],
    );
    let report = exec.apply(&w, &Managed::default()).await.expect("apply");

    // Deleted behind our back: recreated.
    assert!(server.delete("v1", "ConfigMap", Some("default"), "a"));
    exec.apply(&w, &report.managed()).await.expect("re-apply");
    let cm = server
        .get("v1", "ConfigMap", Some("default"), "a")
        .expect("recreated");
    assert_eq!(cm["data"], json!({"k": "v", "other": "x"}));
    assert_eq!(label(&cm), Some("web"));

    // A field of ours removed, our label stripped, a foreign key added: ours come back, the
    // foreign key stays (server-side apply never removes fields it does not own).
    server.edit_as(
        "kubectl-edit",
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        |o| {
            o["data"].as_object_mut().unwrap().remove("other");
            o["data"]["extra"] = json!("theirs");
            o["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(WORK_LABEL);
        },
    );
    exec.apply(&w, &report.managed()).await.expect("repair");
    let cm = server.get("v1", "ConfigMap", Some("default"), "a").unwrap();
    assert_eq!(
        cm["data"],
        json!({"k": "v", "other": "x", "extra": "theirs"})
    );
    assert_eq!(label(&cm), Some("web"));

    // A value of ours changed by someone else: that manager now owns it. Without force this is
    // a conflict naming them; with force the desired value is put back.
    server.edit_as(
        "kubectl-edit",
        "v1",
        "ConfigMap",
        Some("default"),
        "a",
        |o| {
            o["data"]["k"] = json!("edited");
        },
    );
    let err = exec
        .apply(&w, &report.managed())
        .await
        .expect_err("conflict");
    assert_eq!(err.kind, ExecErrorKind::Conflict, "{err}");
    assert!(
        err.message.contains("\"kubectl-edit\"") && err.message.contains(".data.k"),
        "{err}"
    );
    let mut forced = w.clone();
    forced.force_conflicts = true;
    exec.apply(&forced, &report.managed())
        .await
        .expect("forced apply");
    let cm = server.get("v1", "ConfigMap", Some("default"), "a").unwrap();
    assert_eq!(cm["data"]["k"], "v");
    assert_eq!(
        server.owners("v1", "ConfigMap", Some("default"), "a", ".data.k"),
        ["tether-agent"]
    );
    // Owned again: the next unforced apply is clean.
    exec.apply(&w, &report.managed())
        .await
        .expect("clean apply after force");
}

#[tokio::test]
async fn conflict_with_another_manager_is_reported_and_force_takes_over() {
    let (server, exec) = setup().await;
    // Helm already manages this Deployment's replica count.
    server
        .apply_as("helm", false, deployment("default", "web", 5))
        .expect("helm apply");
    let w = work(
        "web",
        1,
        vec![
            config_map(None, "unrelated", json!({"a": "b"})),
            deployment("default", "web", 3),
        ],
    );
    let err: ExecError = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("must conflict");
    assert_eq!(err.kind, ExecErrorKind::Conflict);
    assert_eq!(err.reason(), "ApplyConflict");
    assert!(
        err.message.contains("apps/v1/Deployment default/web"),
        "{err}"
    );
    assert!(err.message.contains("conflict with \"helm\""), "{err}");
    assert!(err.message.contains(".spec.replicas"), "{err}");
    assert!(err.message.contains("forceConflicts: true"), "{err}");
    // Nothing was taken over; the other object of the work was still applied.
    let d = server
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "unrelated")
        .is_some());
    // The reconciler reports it as a failed Applied condition.
    let status = status_for(&w, &Err(err), 0);
    assert_eq!(status.phase, WorkPhase::Failed);
    assert_eq!(status.conditions[0].reason, "ApplyConflict");

    let mut forced = w.clone();
    forced.force_conflicts = true;
    exec.apply(&forced, &Managed::default())
        .await
        .expect("forced apply");
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("PATCH") && r.contains("force=true")));
    let d = server
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        server.owners(
            "apps/v1",
            "Deployment",
            Some("default"),
            "web",
            ".spec.replicas"
        ),
        ["tether-agent"]
    );
    assert_eq!(label(&d), Some("web"));
}

#[tokio::test]
async fn pruning_deletes_what_left_the_work_and_nothing_it_does_not_own() {
    let (server, exec) = setup().await;
    let w1 = work(
        "web",
        1,
        vec![
            config_map(None, "keep", json!({"a": "1"})),
            config_map(None, "drop", json!({"a": "2"})),
            config_map(None, "taken", json!({"a": "3"})),
            service("web"),
        ],
    );
    let r1 = exec
        .apply(&w1, &Managed::default())
        .await
        .expect("apply v1");
    assert_eq!(r1.inventory.len(), 4);
    // Someone re-labels one of our objects for something else: it is no longer ours.
    server.edit_as(
        "kubectl-label",
        "v1",
        "ConfigMap",
        Some("default"),
        "taken",
        |o| {
            o["metadata"]["labels"][WORK_LABEL] = json!("another-work");
        },
    );
    // A look-alike we never created, in the same namespace, with no label.
    server.create(
        "v1",
        "ConfigMap",
        Some("default"),
        json!({"metadata": {"name": "foreign"}, "data": {"x": "y"}}),
    );

    let w2 = work("web", 2, vec![config_map(None, "keep", json!({"a": "1"}))]);
    let r2 = exec.apply(&w2, &r1.managed()).await.expect("apply v2");
    assert_eq!(
        r2.inventory,
        vec![oref("v1", "ConfigMap", Some("default"), "keep")]
    );
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "keep")
        .is_some());
    assert!(
        server
            .get("v1", "ConfigMap", Some("default"), "drop")
            .is_none(),
        "left the work: pruned"
    );
    assert!(
        server
            .get("v1", "Service", Some("default"), "web")
            .is_none(),
        "left the work: pruned"
    );
    assert!(
        server
            .get("v1", "ConfigMap", Some("default"), "taken")
            .is_some(),
        "not ours any more: kept"
    );
    assert!(
        server
            .get("v1", "ConfigMap", Some("default"), "foreign")
            .is_some(),
        "never ours: kept"
    );
    let deletes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");

    // Steady state: nothing left to prune means no LIST or DELETE at all.
    server.clear_requests();
    exec.apply(&w2, &r2.managed())
        .await
        .expect("apply v2 again");
    assert!(
        server.requests().iter().all(|r| r.starts_with("PATCH")),
        "{:?}",
        server.requests()
    );

    // An inventory written by the dir executor (no namespaces) is understood too.
    let w3 = work("web", 3, vec![]);
    exec.apply(
        &w3,
        &Managed::created(vec![oref("v1", "ConfigMap", None, "keep")]),
    )
    .await
    .expect("apply v3");
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "keep")
        .is_none());
}

#[tokio::test]
async fn deployment_readiness_goes_from_progressing_to_available() {
    let (server, exec) = setup().await;
    let w = work(
        "web",
        1,
        vec![deployment("default", "web", 3), service("web")],
    );
    let r = exec.apply(&w, &Managed::default()).await.expect("apply");
    let dep = &r.resources[0];
    assert_eq!(
        dep.object,
        oref("apps/v1", "Deployment", Some("default"), "web")
    );
    assert_eq!(dep.ready, Some(false));
    assert!(
        dep.detail
            .starts_with("replicas=3 ready=0 updated=0 available=0"),
        "{}",
        dep.detail
    );
    assert_eq!(r.resources[1].ready, None, "a Service has no readiness");
    assert_eq!(condition(&r, "Available").status, "False");
    assert_eq!(condition(&r, "Progressing").status, "True");
    assert_eq!(condition(&r, "Degraded").status, "False");
    assert_eq!(status_for(&w, &Ok(r.clone()), 0).phase, WorkPhase::Applied);

    // The controller made progress: two of three pods ready.
    server.set_status(
        "apps/v1",
        "Deployment",
        Some("default"),
        "web",
        json!({
            "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
            "readyReplicas": 2, "availableReplicas": 2,
        }),
    );
    let r = exec.apply(&w, &r.managed()).await.expect("apply");
    assert_eq!(r.resources[0].ready, Some(false));
    assert_eq!(
        r.resources[0].detail,
        "replicas=3 ready=2 updated=3 available=2"
    );
    assert!(
        condition(&r, "Available")
            .message
            .contains("replicas=3 ready=2 updated=3"),
        "{:?}",
        r.conditions
    );

    server.set_status(
        "apps/v1",
        "Deployment",
        Some("default"),
        "web",
        json!({
            "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
            "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [{"type": "Available", "status": "True"}],
        }),
    );
    let r = exec.apply(&w, &r.managed()).await.expect("apply");
    assert_eq!(r.resources[0].ready, Some(true));
    assert_eq!(
        r.resources[0].detail,
        "replicas=3 ready=3 updated=3 available=3"
    );
    assert_eq!(condition(&r, "Available").status, "True");
    assert_eq!(condition(&r, "Progressing").status, "False");
    assert_eq!(
        status_for(&w, &Ok(r.clone()), 0).phase,
        WorkPhase::Available
    );

    // A spec change: the old status describes the previous generation, so not ready again.
    let w2 = work(
        "web",
        2,
        vec![deployment("default", "web", 4), service("web")],
    );
    let r = exec.apply(&w2, &r.managed()).await.expect("apply v2");
    assert_eq!(r.resources[0].ready, Some(false));
    assert!(
        r.resources[0].detail.contains("not yet observed"),
        "{}",
        r.resources[0].detail
    );

    // Stuck rollout: Degraded.
    server.set_status("apps/v1", "Deployment", Some("default"), "web", json!({
        "observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "readyReplicas": 3,
        "availableReplicas": 3,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"web-2\" has timed out progressing."}],
    }));
    let r = exec.apply(&w2, &r.managed()).await.expect("apply v2");
    assert_eq!(condition(&r, "Degraded").status, "True");
    assert!(
        condition(&r, "Degraded")
            .message
            .contains("timed out progressing"),
        "{:?}",
        r.conditions
    );
    assert_eq!(condition(&r, "Progressing").status, "False");
}

#[tokio::test]
async fn job_readiness_is_completion() {
    let (server, exec) = setup().await;
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "m", "image": "busybox"}]}}}});
    let w = work("db", 1, vec![job]);
    let r = exec.apply(&w, &Managed::default()).await.expect("apply");
    assert_eq!(r.resources[0].ready, Some(false));
    server.set_status(
        "batch/v1",
        "Job",
        Some("default"),
        "migrate",
        json!({
        "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    );
    let r = exec.apply(&w, &r.managed()).await.expect("apply");
    assert_eq!(
        r.resources[0].ready,
        Some(true),
        "{}",
        r.resources[0].detail
    );
    server.set_status("batch/v1", "Job", Some("default"), "migrate", json!({
        "failed": 6, "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}));
    let r = exec.apply(&w, &r.managed()).await.expect("apply");
    assert_eq!(r.resources[0].ready, Some(false));
    assert_eq!(condition(&r, "Degraded").status, "True");
}

#[tokio::test]
async fn remove_deletes_and_orphan_leaves() {
    let (server, exec) = setup().await;
    let a = work(
        "a",
        1,
        vec![
            namespace("team-a"),
            config_map(Some("team-a"), "cfg", json!({})),
            deployment("team-a", "api", 1),
        ],
    );
    let ra = exec.apply(&a, &Managed::default()).await.expect("apply a");
    let b = work(
        "b",
        1,
        vec![
            config_map(None, "b-cfg", json!({"k": "v"})),
            deployment("default", "b", 1),
        ],
    );
    let rb = exec.apply(&b, &Managed::default()).await.expect("apply b");

    exec.remove("a", &ra.managed(), false)
        .await
        .expect("remove a");
    assert!(server.get("v1", "Namespace", None, "team-a").is_none());
    assert!(server
        .get("apps/v1", "Deployment", Some("team-a"), "api")
        .is_none());
    assert!(server
        .get("v1", "ConfigMap", Some("team-a"), "cfg")
        .is_none());
    // Contents went before their namespace.
    let deletes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    assert_eq!(
        deletes.last().map(String::as_str),
        Some("DELETE /api/v1/namespaces/team-a"),
        "{deletes:?}"
    );
    // Removing again is a no-op (idempotent after a crash mid-way).
    exec.remove("a", &ra.managed(), false)
        .await
        .expect("remove a again");

    exec.remove("b", &rb.managed(), true)
        .await
        .expect("orphan b");
    let cm = server
        .get("v1", "ConfigMap", Some("default"), "b-cfg")
        .expect("orphaned objects stay");
    assert_eq!(cm["data"]["k"], "v");
    assert_eq!(
        label(&cm),
        None,
        "released objects lose the ownership label"
    );
    assert!(cm["metadata"]["annotations"]
        .get(GENERATION_ANNOTATION)
        .is_none());
    assert!(server
        .get("apps/v1", "Deployment", Some("default"), "b")
        .is_some());
    // Released means released: a later removal with the same inventory deletes nothing.
    exec.remove("b", &rb.managed(), false)
        .await
        .expect("remove b");
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "b-cfg")
        .is_some());
    assert!(server
        .get("apps/v1", "Deployment", Some("default"), "b")
        .is_some());
}

#[tokio::test]
async fn unknown_kinds_are_invalid_with_a_clear_message() {
    let (server, exec) = setup().await;
    let w = work(
        "bad",
        1,
        vec![json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})],
    );
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("unknown group");
    assert_eq!(err.kind, ExecErrorKind::Invalid, "{err}");
    assert_eq!(err.reason(), "InvalidManifest");
    assert!(
        err.message
            .contains("does not serve apiVersion example.com/v1"),
        "{err}"
    );
    assert!(err.message.contains("CRD"), "{err}");

    let w = work(
        "bad",
        1,
        vec![
            config_map(None, "fine", json!({})),
            json!({"apiVersion": "v1", "kind": "Configmap", "metadata": {"name": "typo"}}),
        ],
    );
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("unknown kind");
    assert_eq!(err.kind, ExecErrorKind::Invalid, "{err}");
    assert!(
        err.message.contains("serves no kind \"Configmap\" in v1"),
        "{err}"
    );
    assert!(err.message.contains("manifest 1"), "{err}");
    // The valid object was applied; nothing was pruned.
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "fine")
        .is_some());

    let w = work(
        "bad",
        1,
        vec![json!({"kind": "ConfigMap", "metadata": {"name": "x"}})],
    );
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("no apiVersion");
    assert_eq!(err.kind, ExecErrorKind::Invalid);
    assert!(err.message.contains("missing apiVersion"), "{err}");

    // A namespace that does not exist is the manifest's problem too.
    let w = work("bad", 1, vec![config_map(Some("nowhere"), "x", json!({}))]);
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("no namespace");
    assert_eq!(err.kind, ExecErrorKind::Invalid);
    assert!(
        err.message.contains("namespaces \"nowhere\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_within_the_timeout() {
    let server = FakeApiServer::start().await;
    let exec = KubeExecutor::with_timeout(server.kube_config(), Duration::from_millis(500))
        .expect("executor");
    let w = work(
        "web",
        1,
        vec![
            config_map(None, "a", json!({})),
            config_map(None, "b", json!({})),
        ],
    );
    exec.apply(&w, &Managed::default())
        .await
        .expect("apply while up");

    // Accepts connections but never answers.
    server.set_stalled(true);
    let started = Instant::now();
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("silent server");
    assert_eq!(err.kind, ExecErrorKind::Transient, "{err}");
    assert!(err.message.contains("did not answer within 500ms"), "{err}");
    // One timeout, not one per object.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Gone entirely.
    server.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = exec
        .apply(&w, &Managed::default())
        .await
        .expect_err("server down");
    assert_eq!(err.kind, ExecErrorKind::Transient, "{err}");
    assert!(
        err.message.contains("Kubernetes API at http://127.0.0.1:"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = exec
        .remove(
            "web",
            &Managed::created(vec![oref("v1", "ConfigMap", Some("default"), "a")]),
            false,
        )
        .await
        .expect_err("remove while down");
    assert_eq!(err.kind, ExecErrorKind::Transient, "{err}");
    assert_eq!(exec.cluster_facts().await, (None, None));
}

#[tokio::test]
async fn cluster_facts_report_version_and_nodes() {
    let (_server, exec) = setup().await;
    assert_eq!(
        exec.cluster_facts().await,
        (Some("v1.33.1+k3s1".to_string()), Some(2))
    );
    assert!(
        exec.describe().starts_with("kube:http://127.0.0.1:"),
        "{}",
        exec.describe()
    );
}

#[tokio::test]
async fn reconciler_drives_the_kube_executor_end_to_end() {
    let (server, exec) = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(tether_store::Store::open(dir.path().join("agent.redb")).expect("store"));
    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(exec),
        Signals::default(),
        Duration::from_secs(3600),
    );
    let put = |w: DesiredWork| {
        store
            .write(|tx| tx.put(&DESIRED, &w.name.clone(), &w))
            .expect("put desired");
    };

    put(work(
        "web",
        1,
        vec![
            config_map(None, "a", json!({})),
            config_map(None, "b", json!({})),
        ],
    ));
    assert_eq!(reconciler.pass().await.expect("pass"), 1);
    let applied = store
        .read(|tx| tx.get(&APPLIED, "web"))
        .expect("read")
        .expect("applied");
    assert_eq!(applied.inventory.len(), 2);
    assert_eq!(applied.last_status.phase, WorkPhase::Available);

    // Drift repaired on the next pass without a new status (nothing new to report).
    server.delete("v1", "ConfigMap", Some("default"), "a");
    assert_eq!(reconciler.pass().await.expect("pass"), 0);
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "a")
        .is_some());

    // b leaves the work: pruned through the inventory stored in redb.
    put(work("web", 2, vec![config_map(None, "a", json!({}))]));
    assert_eq!(reconciler.pass().await.expect("pass"), 1);
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "b")
        .is_none());

    // Removal.
    let mut removed = work("web", 3, vec![]);
    removed.removal = Some(Removal { orphan: false });
    put(removed);
    assert_eq!(reconciler.pass().await.expect("pass"), 1);
    assert!(server
        .get("v1", "ConfigMap", Some("default"), "a")
        .is_none());
    assert!(store
        .read(|tx| tx.get(&APPLIED, "web"))
        .expect("read")
        .is_none());
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object"}}}],
        },
    })
}

fn widget(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget",
           "metadata": {"name": name, "namespace": ns}, "spec": {"size": 3}})
}

/// The test server itself: a CRD serves its kind only once established.
#[tokio::test]
async fn the_test_server_serves_a_crd_kind_only_after_its_delay() {
    let server = FakeApiServer::start().await;
    server.set_crd_delay(Duration::from_millis(400));
    let client = kube::Client::try_from(server.kube_config()).unwrap();
    let served = || async {
        client
            .list_api_group_resources("example.com/v1")
            .await
            .map(|l| l.resources.iter().any(|r| r.kind == "Widget"))
            .unwrap_or(false)
    };
    assert!(!served().await);
    server.create(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        widget_crd(),
    );
    assert!(!served().await, "served before it was established");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(served().await, "not served after the delay");
    assert!(server.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "widgets.example.com"
    ));
    assert!(!served().await, "still served after the CRD was deleted");
}

/// Real manifests list custom resources before their CRD and namespace (kube-prometheus,
/// operators' bundles). The executor applies namespaces, then CRDs, then the rest, waits for
/// a CRD it just applied to be served, and removes in the reverse order.
#[tokio::test]
async fn crds_and_namespaces_go_first_and_custom_resources_wait_for_their_crd() {
    let (server, exec) = setup().await;
    server.set_crd_delay(Duration::from_millis(800));
    let w = work(
        "w",
        1,
        vec![widget("team-w", "big"), widget_crd(), namespace("team-w")],
    );
    let report = exec
        .apply(&w, &Managed::default())
        .await
        .expect("custom resource waits for its CRD instead of failing the pass");
    assert_eq!(report.inventory.len(), 3);
    let got = server
        .get("example.com/v1", "Widget", Some("team-w"), "big")
        .expect("widget applied");
    assert_eq!(got["spec"]["size"], 3);
    let patches: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .map(|r| r.split('?').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        patches,
        vec![
            "PATCH /api/v1/namespaces/team-w".to_string(),
            "PATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
                .to_string(),
            "PATCH /apis/example.com/v1/namespaces/team-w/widgets/big".to_string(),
        ]
    );

    // A custom resource whose CRD is not in the work is still refused at once.
    let started = Instant::now();
    let orphan_cr = work(
        "x",
        1,
        vec![
            json!({"apiVersion": "nowhere.example.com/v1", "kind": "Gadget",
                    "metadata": {"name": "g", "namespace": "default"}}),
        ],
    );
    let err = exec
        .apply(&orphan_cr, &Managed::default())
        .await
        .expect_err("no CRD serves Gadget");
    assert_eq!(err.kind, ExecErrorKind::Invalid, "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(5));

    server.clear_requests();
    exec.remove("w", &report.managed(), false)
        .await
        .expect("remove");
    let deletes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    let pos = |needle: &str| {
        deletes
            .iter()
            .position(|d| d.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not deleted: {deletes:?}"))
    };
    assert!(
        pos("/widgets/big") < pos("/customresourcedefinitions/")
            && pos("/customresourcedefinitions/") < pos("/api/v1/namespaces/team-w"),
        "{deletes:?}"
    );
}
