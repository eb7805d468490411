//! Admin identities, roles and scopes end to end: a real hub, real agents and admin
//! credentials made the way `tetherctl admins` makes them (key and CSR here, signed by the hub).

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tether_hub::api::{AddAdminRequest, AdminRole, AdminScope, LabelsRequest};
use tether_hub::config::CtlConfig;
use tether_hub::AdminClient;
use tether_protocol::work::{LabelSelector, Targets};
use tether_sim::fleet::{all_in_state, wait_for, LocalAgent, LocalHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A new admin credential: key and CSR made here, signed by the hub through `root`.
async fn credential(
    hub: &LocalHub,
    root: &AdminClient,
    name: &str,
    role: AdminRole,
    scope: AdminScope,
) -> CtlConfig {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr_pem = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = root
        .add_admin(&AddAdminRequest {
            name: name.into(),
            role,
            scope,
            csr_pem,
            valid_days: Some(1),
        })
        .await
        .unwrap();
    CtlConfig {
        cert_pem: issued.cert_pem,
        key_pem: key.serialize_pem(),
        ..hub.ctl_config().unwrap()
    }
}

fn region(r: &str) -> Targets {
    Targets {
        clusters: vec![],
        selector: Some(LabelSelector {
            match_labels: [("region".to_string(), r.to_string())].into(),
            ..Default::default()
        }),
    }
}

fn refused(r: anyhow::Result<impl std::fmt::Debug>, needle: &str) {
    match r {
        Ok(v) => panic!("expected a refusal naming {needle:?}, got {v:?}"),
        Err(e) => assert!(format!("{e:#}").contains(needle), "{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_scopes_are_enforced_and_revocation_cuts_live_connections() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let root = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let mut agents = Vec::new();
    for (name, r) in [("eu1", "eu"), ("us1", "us")] {
        let mut s = spec(&hub, d, name, &token);
        s.labels.insert("region".into(), r.into());
        agents.push(LocalAgent::spawn(s));
    }
    wait_for(
        &root,
        WAIT,
        "2 Ready",
        all_in_state(&names(&["eu1", "us1"]), "Ready"),
    )
    .await
    .unwrap();

    let viewer = AdminClient::new(
        &credential(
            &hub,
            &root,
            "vera",
            AdminRole::Viewer,
            AdminScope::default(),
        )
        .await,
    )
    .unwrap();
    let eu_scope = AdminScope {
        clusters: [("region".to_string(), "eu".to_string())].into(),
        namespaces: vec!["default".into()],
    };
    let olivia_cfg = credential(&hub, &root, "olivia", AdminRole::Operator, eu_scope).await;
    let olivia = AdminClient::new(&olivia_cfg).unwrap();
    assert_eq!(olivia.whoami().await.unwrap().role, AdminRole::Operator);

    // A viewer reads everything and changes nothing.
    assert_eq!(viewer.clusters().await.unwrap().len(), 2);
    refused(
        viewer
            .apply_work(&config_work("v", region("eu"), &["a"], "1"))
            .await,
        "needs the operator role",
    );
    refused(viewer.admins().await, "needs the admin role");

    // An operator scoped to region=eu and namespace default: not the us cluster, not
    // kube-system, not a cluster-scoped object, not moving a cluster out of its set.
    refused(
        olivia
            .apply_work(&config_work("to-us", region("us"), &["a"], "1"))
            .await,
        "outside the scope of this operator",
    );
    let mut system = config_work("sys", region("eu"), &["a"], "1");
    system.spec.manifests[0]["metadata"]["namespace"] = "kube-system".into();
    refused(olivia.apply_work(&system).await, "namespace kube-system");
    let mut crb = config_work("crb", region("eu"), &["a"], "1");
    crb.spec.manifests = vec![serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "root"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "system:unauthenticated"}]
    })];
    refused(olivia.apply_work(&crb).await, "targets no namespace");
    let out_of_set = LabelsRequest {
        set: [("region".to_string(), "us".to_string())].into(),
        remove: vec![],
    };
    refused(
        olivia.set_labels("eu1", &out_of_set).await,
        "outside the scope",
    );
    refused(olivia.detach("eu1").await, "needs the admin role");

    // Within its scope the operator's work is applied, and reaches eu1 only.
    let app = config_work("eu-app", region("eu"), &["a"], "1");
    olivia.apply_work(&app).await.unwrap();
    wait_applied(&root, "eu-app", 1, 1).await;
    assert!(manifests_dir(d, "eu1").join("tether-eu-app.yaml").exists());
    assert!(!manifests_dir(d, "us1").join("tether-eu-app.yaml").exists());
    // A work of a wider scope is not the operator's to change.
    root.apply_work(&config_work("global", region("us"), &["a"], "1"))
        .await
        .unwrap();
    refused(
        olivia.delete_work("global", false).await,
        "does not contain",
    );

    // The scope is checked at every decision: a work that selects eu1 by its site label,
    // applied while eu1 is in the set, leaves eu1 once an admin relabels it out of the set.
    let by_site = config_work(
        "by-site",
        Targets {
            clusters: vec![],
            selector: Some(LabelSelector {
                match_labels: [("site".to_string(), "eu1".to_string())].into(),
                ..Default::default()
            }),
        },
        &["b"],
        "1",
    );
    olivia.apply_work(&by_site).await.unwrap();
    wait_applied(&root, "by-site", 1, 1).await;
    assert!(manifests_dir(d, "eu1").join("tether-by-site.yaml").exists());
    refused(
        olivia
            .apply_work(&config_work("all", everywhere(), &["c"], "1"))
            .await,
        "us1",
    );
    root.set_labels("eu1", &out_of_set).await.unwrap();
    eventually_async(|| async {
        root.placement("by-site").await.is_ok_and(|p| {
            p.iter().any(|c| {
                c.cluster == "eu1" && !c.selected && c.reason.contains("outside the cluster set")
            })
        })
    })
    .await;
    let file = manifests_dir(d, "eu1").join("tether-by-site.yaml");
    eventually("eu1 removes by-site", || !file.exists()).await;

    // Every action names its actor.
    let audit = root.audit(200).await.unwrap();
    let by = |kind: &str, actor: &str| audit.iter().any(|e| e.kind == kind && e.actor == actor);
    assert!(by("admin_added", "admin:tether-admin"), "{audit:#?}");
    assert!(by("work_applied", "admin:olivia"), "{audit:#?}");
    assert!(by("work_applied", "admin:tether-admin"), "{audit:#?}");
    assert!(by("labels_changed", "admin:tether-admin"), "{audit:#?}");

    // Revocation closes a live, kept-alive connection at once.
    let mut conn = raw_connection(&olivia_cfg).await;
    let first = request(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    root.revoke_admin("olivia").await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the revoked admin's connection is still open: {closed:?}"
    );
    refused(olivia.whoami().await, "401");
    refused(
        root.revoke_admin("tether-admin").await,
        "last live credential",
    );
    drop(agents);
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn raw_connection(cfg: &CtlConfig) -> Tls {
    let cert = Arc::new(
        tether_transport::tls::SwappableClientCert::new(&cfg.cert_pem, &cfg.key_pem).unwrap(),
    );
    let tls = tether_transport::tls::session_client_config(&cfg.ca_pem, cert, b"http/1.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(&cfg.admin_address)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(cfg.server_name.clone()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// One kept-alive `GET /v1/whoami`; returns the response head and body as read so far.
async fn request(conn: &mut Tls) -> String {
    conn.write_all(b"GET /v1/whoami HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
