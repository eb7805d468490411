//! Hostile and broken peers: every case gets a clear refusal, the hub keeps serving the
//! well-behaved agent, and nothing already stored is lost.

mod common;
mod peer;

use common::*;
use peer::*;
use std::sync::Arc;
use std::time::Duration;
use tether_hub::parts::pki::{self, CertificateAuthority};
use tether_protocol::{
    close_code, ErrorCode, Facts, Heartbeat, JoinRequest, Labels, Message, ALPN_JOIN, ALPN_SESSION,
    PROTOCOL_VERSION,
};
use tether_sim::fleet::{all_in_state, wait_for, LocalHub};
use tether_transport::framed::{read_frame, request, send_last};
use tether_transport::tls::{self, PinnedCaVerifier, SwappableClientCert};
use tether_transport::{certs, quic};

/// Connect with a certificate and expect the hub to refuse it, whichever side notices first.
async fn expect_refused(hub: &LocalHub, cfg: rustls::ClientConfig) -> String {
    match dial(hub, cfg).await {
        Err(e) => e.to_string(),
        Ok((_ep, conn)) => match request(&conn, &hello_msg(PROTOCOL_VERSION), limits()).await {
            Ok(m) => panic!("hub accepted a bad certificate and answered {m:?}"),
            Err(e) => conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| e.to_string()),
        },
    }
}

fn heartbeat(claimed: Option<&str>, hostname: &str) -> Message {
    Message::Heartbeat(Heartbeat {
        facts: Facts {
            hostname: hostname.into(),
            ..Facts::default()
        },
        conditions: vec![],
        sent_at_ms: 0,
        cluster: claimed.map(str::to_string),
        outbox_depth: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_the_hub_keeps_serving() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Labels::new()).await.unwrap();
    let id = joined_identity(&hub, dir.path(), "good", &token).await;
    let bystander = agent(&hub, dir.path(), "bystander", &token);
    wait_for(
        &admin,
        WAIT,
        "bystander Ready",
        all_in_state(&names(&["bystander"]), "Ready"),
    )
    .await
    .unwrap();
    let before = admin.cluster("good").await.unwrap();

    // 1. No client certificate on tether/1.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certs::certs_from_pem(&id.ca_pem, "ca").unwrap().remove(0))
        .unwrap();
    let mut anon = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![ALPN_SESSION.to_vec()];
    let (_ep, conn) = dial(&hub, anon).await.unwrap();
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::UNAUTHORIZED)
    );
    assert!(conn
        .close_reason()
        .unwrap()
        .to_string()
        .contains("client certificate is required"));

    // 2. A certificate for the same name from another CA.
    let other = pki::generate("evil-hub", &[], tether_hub::util::now_ms()).unwrap();
    let other_ca = CertificateAuthority::load(&other.ca_pem, &other.ca_key_pem).unwrap();
    let (key, csr) = tether_agent::join::key_and_csr("good").unwrap();
    let forged = other_ca
        .sign_cluster(
            &csr,
            "good",
            Duration::from_secs(3600),
            tether_hub::util::now_ms(),
        )
        .unwrap();
    let why = expect_refused(&hub, session_tls(&id.ca_pem, &forged.cert_pem, &key)).await;
    println!("other CA: {why}");

    // 3. An expired certificate from the right CA.
    let dd = tether_hub::config::DataDir::new(dir.path().join("hub"));
    let ca = CertificateAuthority::load(
        &std::fs::read_to_string(dd.ca_cert()).unwrap(),
        &std::fs::read_to_string(dd.ca_key()).unwrap(),
    )
    .unwrap();
    let ten_days_ago = tether_hub::util::now_ms() - 10 * 86_400_000;
    let expired = ca
        .sign_cluster(&csr, "good", Duration::from_secs(86_400), ten_days_ago)
        .unwrap();
    let why = expect_refused(&hub, session_tls(&id.ca_pem, &expired.cert_pem, &key)).await;
    println!("expired: {why}");

    // 4. A valid certificate from the right CA that the hub never issued to this cluster.
    let unissued = ca
        .sign_cluster(
            &csr,
            "good",
            Duration::from_secs(3600),
            tether_hub::util::now_ms(),
        )
        .unwrap();
    let (_ep, conn) = dial(&hub, session_tls(&id.ca_pem, &unissued.cert_pem, &key))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::UNAUTHORIZED)
    );

    // 5. TLS session resumption must not carry an earlier certificate past our checks: a
    // client that offers to resume (with a ticket from a valid session) and then presents an
    // unissued certificate is still refused, because the hub never resumes.
    let swappable = Arc::new(SwappableClientCert::new(&id.cert_pem, &id.key_pem).unwrap());
    let mut resuming =
        tls::session_client_config(&id.ca_pem, swappable.clone(), ALPN_SESSION).unwrap();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let quic_cfg = quic::client_config(resuming).unwrap();
    let endpoint = quic::client_endpoint(hub.quic_addr()).unwrap();
    let conn = endpoint
        .connect_with(quic_cfg.clone(), hub.quic_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(
        request(&conn, &hello_msg(PROTOCOL_VERSION), limits())
            .await
            .unwrap(),
        Message::HelloAck(_)
    ));
    // Give a session ticket (if the hub sent one) time to arrive before closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.close(0u32.into(), b"bye");
    swappable.swap(&unissued.cert_pem, &key).unwrap();
    let conn = endpoint
        .connect_with(quic_cfg, hub.quic_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::UNAUTHORIZED),
        "a resumed session skipped the certificate checks"
    );

    let metrics = admin.get_text("/metrics").await.unwrap();
    for (reason, n) in [
        ("no_client_certificate", 1),
        ("unknown_issuer", 1),
        ("expired", 1),
        ("serial_not_issued", 2),
    ] {
        assert!(
            metrics.contains(&format!(
                "tether_hub_handshakes_rejected_total{{reason=\"{reason}\"}} {n}"
            )),
            "{reason} not counted {n} times:\n{metrics}"
        );
    }

    // The legitimate identity still works, the bystander is still Ready, nothing was lost.
    let (_ep, conn) = session(&hub, &id).await;
    assert!(matches!(
        request(&conn, &heartbeat(None, "ok"), limits())
            .await
            .unwrap(),
        Message::HeartbeatAck(_)
    ));
    let after = admin.cluster("good").await.unwrap();
    assert_eq!(
        (after.cert_serial, after.joined_at_ms, after.labels),
        (before.cert_serial, before.joined_at_ms, before.labels)
    );
    assert_eq!(
        admin.cluster("bystander").await.unwrap().state,
        tether_hub::api::ClusterState::Ready
    );
    bystander.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Labels::new()).await.unwrap();
    let id = joined_identity(&hub, dir.path(), "good", &token).await;
    let victim_id = joined_identity(&hub, dir.path(), "victim", &token).await;
    let bystander = agent(&hub, dir.path(), "bystander", &token);
    wait_for(
        &admin,
        WAIT,
        "bystander Ready",
        all_in_state(&names(&["bystander"]), "Ready"),
    )
    .await
    .unwrap();

    // Oversize frame: refused from the header alone, connection closed.
    let (_ep, conn) = session(&hub, &id).await;
    let mut big = (5u32 * 1024 * 1024).to_be_bytes().to_vec();
    big.extend_from_slice(&[0u8; 1024]);
    let (code, msg) = peer_error(raw(&conn, &big, false).await);
    assert_eq!(code, ErrorCode::TooLarge, "{msg}");
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::PROTOCOL_ERROR)
    );

    // Truncated frame: header promises 100 bytes, stream ends after 10.
    let (_ep, conn) = session(&hub, &id).await;
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[0xa0; 10]);
    let (code, msg) = peer_error(raw(&conn, &short, true).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("closed before a full frame"), "{msg}");
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::PROTOCOL_ERROR)
    );

    // Garbage body.
    let (_ep, conn) = session(&hub, &id).await;
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0x13, 0x37, 0x00, 0xde, 0xad, 0xbe, 0xef]);
    let (code, _) = peer_error(raw(&conn, &garbage, true).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::PROTOCOL_ERROR)
    );

    // Unknown message type (a newer agent): refused, but the session stays usable.
    let (_ep, conn) = session(&hub, &id).await;
    #[derive(serde::Serialize)]
    #[serde(tag = "type", content = "body")]
    enum Future {
        Teleport { to: String },
    }
    let body = tether_protocol::encode(&Future::Teleport { to: "mars".into() }).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let (code, msg) = peer_error(raw(&conn, &frame, true).await);
    assert_eq!(code, ErrorCode::UnexpectedMessage);
    assert!(msg.contains("Teleport"), "{msg}");
    assert!(matches!(
        request(&conn, &heartbeat(None, "still-here"), limits())
            .await
            .unwrap(),
        Message::HeartbeatAck(_)
    ));

    // A heartbeat that names another cluster updates only the sender (identity = certificate).
    let victim_before = admin.cluster("victim").await.unwrap();
    assert!(matches!(
        request(&conn, &heartbeat(Some("victim"), "spoofed"), limits())
            .await
            .unwrap(),
        Message::HeartbeatAck(_)
    ));
    assert_eq!(
        admin.cluster("good").await.unwrap().facts.hostname,
        "spoofed"
    );
    assert_eq!(
        admin.cluster("victim").await.unwrap().facts,
        victim_before.facts
    );
    drop(victim_id);

    // Incompatible protocol version: a clear error, then the connection is closed.
    let (_ep, conn) = dial(&hub, session_tls(&id.ca_pem, &id.cert_pem, &id.key_pem))
        .await
        .unwrap();
    let (code, msg) = peer_error(request(&conn, &hello_msg(99), limits()).await);
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(
        msg.contains("speaks 99") && msg.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{msg}"
    );
    assert_eq!(
        closed_with(&conn).await,
        u64::from(close_code::VERSION_MISMATCH)
    );

    // The join channel accepts nothing but join messages, and refuses malformed CSRs.
    let pin = certs::parse_fingerprint(&hub.ca_sha256).unwrap();
    let join_tls =
        tls::join_client_config(Arc::new(PinnedCaVerifier::new(pin)), ALPN_JOIN).unwrap();
    let (_ep, conn) = dial(&hub, join_tls).await.unwrap();
    assert!(matches!(
        request(&conn, &hello_msg(PROTOCOL_VERSION), limits())
            .await
            .unwrap(),
        Message::HelloAck(_)
    ));
    let (code, _) = peer_error(request(&conn, &heartbeat(Some("good"), "x"), limits()).await);
    assert_eq!(code, ErrorCode::UnexpectedMessage);
    let token2 = hub.token(1, true, Labels::new()).await.unwrap();
    let bad_csr = Message::JoinRequest(JoinRequest {
        token: token2,
        name: "newcomer".into(),
        labels: Labels::new(),
        facts: Facts::default(),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        request_secret: "s".repeat(64),
    });
    let (code, msg) = peer_error(request(&conn, &bad_csr, limits()).await);
    assert_eq!(code, ErrorCode::CsrInvalid, "{msg}");
    // A join message on the session channel is refused too.
    let (_ep2, sconn) = session(&hub, &id).await;
    let (mut send, mut recv) = sconn.open_bi().await.unwrap();
    send_last(&mut send, &bad_csr, limits()).await.unwrap();
    assert!(
        matches!(read_frame(&mut recv, limits()).await.unwrap(), Message::Error(e) if e.code == ErrorCode::UnexpectedMessage)
    );

    // Throughout: the bystander stayed Ready and all three records are intact.
    let clusters = admin.clusters().await.unwrap();
    assert_eq!(clusters.len(), 3);
    assert_eq!(
        clusters
            .iter()
            .find(|c| c.name == "bystander")
            .unwrap()
            .state,
        tether_hub::api::ClusterState::Ready
    );
    bystander.stop().await.unwrap();
}
