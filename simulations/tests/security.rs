//! Red-team findings, end to end: a hostile client speaking the wire format against a real hub
//! on loopback. Each test failed before the fix it names.

mod common;
mod peer;

use common::*;
use peer::*;
use std::sync::Arc;
use std::time::Duration;
use tether_hub::parts::MAX_JOINS_PER_SOURCE;
use tether_hub::parts::RENEWALS_PER_DAY;
use tether_protocol::{
    close_code, ErrorCode, HeldWork, Inventory, JoinPoll, JoinRequest, Labels, Message,
    RenewRequest, StatusBatch, StatusEntry, ALPN_JOIN, MAX_STATUS_ENTRIES, PROTOCOL_VERSION,
};
use tether_store::hub::{
    cluster_prefix, CLUSTER_WORKS, STATUS_CURSORS, STATUS_HISTORY_PER_CLUSTER,
};
use tether_transport::framed::request;
use tether_transport::tls::{self, PinnedCaVerifier};
use tether_transport::{certs, quic, TransportError};

/// A connection that finished the TLS handshake but has not sent Hello is closed by deny and by
/// detach at once; it used to send Hello afterwards and get a working session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_detach_close_connections_before_hello() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Labels::new()).await.unwrap();
    for (name, code) in [
        ("held-deny", close_code::DENIED),
        ("held-detach", close_code::DETACHED),
    ] {
        let id = joined_identity(&hub, dir.path(), name, &token).await;
        let (_ep, conn) = dial(&hub, session_tls(&id.ca_pem, &id.cert_pem, &id.key_pem))
            .await
            .unwrap();
        // Give the hub time to authorize the handshake, as the red-team client did.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let result = if code == close_code::DENIED {
            admin.deny(name, "stolen").await.unwrap()
        } else {
            admin.detach(name).await.unwrap()
        };
        assert!(result.session_closed, "{name}: {result:?}");
        assert_eq!(closed_with(&conn).await, u64::from(code), "{name}");
        assert!(
            request(&conn, &hello_msg(PROTOCOL_VERSION), limits())
                .await
                .is_err(),
            "{name}: Hello answered after revocation"
        );
    }
    eventually("no connection of theirs is tracked", || {
        hub.running().state.sessions.tracked() == 0
    })
    .await;
}

fn applied(work: &str, generation: u64) -> tether_protocol::WorkStatus {
    tether_protocol::WorkStatus {
        work: work.into(),
        generation,
        hash: "0".repeat(64),
        phase: tether_protocol::WorkPhase::Applied,
        conditions: vec![],
        resources: vec![],
        message: String::new(),
        observed_at_ms: 0,
    }
}

fn batch(from: u64, works: &[&str]) -> Message {
    let entries: Vec<StatusEntry> = works
        .iter()
        .enumerate()
        .map(|(i, w)| StatusEntry {
            seq: from + i as u64,
            status: applied(w, 1),
        })
        .collect();
    Message::StatusBatch(StatusBatch {
        from_seq: from,
        to_seq: from + works.len() as u64 - 1,
        entries,
    })
}

fn rows_of(hub: &tether_sim::fleet::LocalHub, cluster: &str) -> (usize, usize, Option<u64>) {
    let prefix = cluster_prefix(cluster);
    hub.running()
        .state
        .store
        .read(|tx| {
            Ok::<_, tether_store::StoreError>((
                tx.list_prefix(&CLUSTER_WORKS, &prefix)?.len(),
                tether_hub::parts::history_of(tx, cluster)?.len(),
                tx.get(&STATUS_CURSORS, cluster)?,
            ))
        })
        .unwrap()
}

/// A cluster may speak only about its own works: status and inventory about another
/// cluster's work or an invented one are acknowledged but not stored, a batch is bounded, the
/// per-cluster history is pruned, and detach removes what the cluster left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cannot_report_on_works_that_are_not_its_own() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Labels::new()).await.unwrap();
    let evil = joined_identity(&hub, dir.path(), "evil", &token).await;
    let _good = agent(&hub, dir.path(), "good", &token);
    admin
        .apply_work(&config_work("theirs", only(&["good"]), &["a"], "1"))
        .await
        .unwrap();
    admin
        .apply_work(&config_work("mine", only(&["evil"]), &["a"], "1"))
        .await
        .unwrap();
    wait_applied(&admin, "theirs", 1, 1).await;
    eventually("mine is placed on evil", || {
        hub.running()
            .state
            .decisions
            .snapshot()
            .get("mine")
            .is_some_and(|d| d.selected.contains_key("evil"))
    })
    .await;

    let (_ep, conn) = session(&hub, &evil).await;
    let inventory = Message::Inventory(Inventory {
        works: (0..50)
            .map(|i| format!("invented-{i}"))
            .chain(["theirs".to_string()])
            .map(|w| {
                (
                    w,
                    HeldWork {
                        generation: 1,
                        hash: "0".repeat(64),
                        fenced: false,
                    },
                )
            })
            .collect(),
    });
    assert!(matches!(
        request(&conn, &inventory, limits()).await.unwrap(),
        Message::InventoryAck(_)
    ));
    let answer = request(&conn, &batch(1, &["theirs", "invented-1"]), limits())
        .await
        .unwrap();
    assert!(
        matches!(answer, Message::StatusAck(ref a) if a.through_seq == 2),
        "foreign entries are acknowledged (not resent forever): {answer:?}"
    );
    let (rows, history, _) = rows_of(&hub, "evil");
    assert_eq!((rows, history), (0, 0), "foreign input was stored");
    let theirs = admin.work("theirs").await.unwrap();
    assert!(
        theirs.clusters.iter().all(|c| c.cluster != "evil"),
        "{theirs:#?}"
    );

    // Too many entries in one batch: a typed refusal.
    let many: Vec<&str> = vec!["mine"; MAX_STATUS_ENTRIES + 1];
    let (code, why) = peer_error(request(&conn, &batch(3, &many), limits()).await);
    assert_eq!(code, ErrorCode::TooLarge, "{why}");

    // Its own work: stored, and the history keeps the newest entries only.
    let mut seq = 3;
    for _ in 0..5 {
        let own = vec!["mine"; 240];
        let answer = request(&conn, &batch(seq, &own), limits()).await.unwrap();
        assert!(matches!(answer, Message::StatusAck(_)), "{answer:?}");
        seq += 240;
    }
    // The filer prunes as it files, at most a second later (see `ingest::history`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (rows, history, cursor) = loop {
        let seen = rows_of(&hub, "evil");
        if seen.1 == STATUS_HISTORY_PER_CLUSTER || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows, 1);
    assert_eq!(history, STATUS_HISTORY_PER_CLUSTER);
    assert_eq!(cursor, Some(seq - 1));
    let refused = tether_sim::fleet::metric(
        &admin.get_text("/metrics").await.unwrap(),
        "tether_hub_cluster_input_refused_total{reason=\"foreign_status\"}",
    );
    assert_eq!(refused, 2.0);

    admin.detach("evil").await.unwrap();
    assert_eq!(
        rows_of(&hub, "evil"),
        (0, 0, None),
        "detach left rows behind"
    );
}

/// Honest agents still get in while a flood of 1,000 Initials a second that never complete
/// runs from another address; the flood used to hold every handshake slot for 10 s each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_handshakes_succeed_during_an_initial_flood() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let id = joined_identity(&hub, dir.path(), "honest", &token).await;
    let flood =
        tether_sim::flood::Flood::start(hub.quic_addr(), "127.0.0.2".parse().unwrap(), 1000)
            .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = 20;
    let mut ok = 0;
    for _ in 0..attempts {
        let tls = session_tls(&id.ca_pem, &id.cert_pem, &id.key_pem);
        let r = tokio::time::timeout(Duration::from_secs(10), dial(&hub, tls)).await;
        if let Ok(Ok((_ep, conn))) = r {
            if matches!(
                request(&conn, &hello_msg(PROTOCOL_VERSION), limits()).await,
                Ok(Message::HelloAck(_))
            ) {
                ok += 1;
            }
            conn.close(0u32.into(), b"done");
        }
    }
    let sent = flood.sent();
    drop(flood);
    let metrics = hub.admin().unwrap().get_text("/metrics").await.unwrap();
    println!(
        "{ok}/{attempts} honest sessions during a flood of {sent} Initials; retries sent {}",
        tether_sim::fleet::metric(
            &metrics,
            "tether_hub_handshakes_rejected_total{reason=\"retry_sent\"}"
        )
    );
    assert!(sent > 1000, "the flood did not run: {sent}");
    assert!(ok * 100 >= attempts * 95, "{ok}/{attempts} honest sessions");
}

fn join_tls(hub: &tether_sim::fleet::LocalHub) -> rustls::ClientConfig {
    let pin = certs::parse_fingerprint(&hub.ca_sha256).unwrap();
    tls::join_client_config(Arc::new(PinnedCaVerifier::new(pin)), ALPN_JOIN).unwrap()
}

/// A join connection from `from` that has said Hello.
async fn join_conn(
    hub: &tether_sim::fleet::LocalHub,
    from: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let mut ep = quinn::Endpoint::client(format!("{from}:0").parse().unwrap()).unwrap();
    ep.set_default_client_config(quic::client_config(join_tls(hub)).unwrap());
    let conn = ep
        .connect(hub.quic_addr(), "localhost")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    match request(&conn, &hello_msg(PROTOCOL_VERSION), limits()).await {
        Ok(Message::HelloAck(_)) => Ok((ep, conn)),
        other => Err(format!("{other:?} / {:?}", conn.close_reason())),
    }
}

/// Anonymous join connections: a small frame limit, a per-source budget, an idle timeout.
/// 256 idle ones from one address used to lock every legitimate join out; a 4 MB name was
/// read whole and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_connections_are_bounded_per_source_in_size_and_in_idle_time() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(dir.path(), |c| {
        c.join_idle_timeout = Duration::from_secs(2);
    })
    .await;

    // One source holds at most its budget of join connections.
    let mut held = Vec::new();
    for _ in 0..MAX_JOINS_PER_SOURCE {
        held.push(
            join_conn(&hub, "127.0.0.2")
                .await
                .expect("within the budget"),
        );
    }
    let extra = join_conn(&hub, "127.0.0.2").await;
    assert!(
        extra
            .as_ref()
            .is_err_and(|e| e.contains("too many join connections")),
        "{:?}",
        extra.map(|_| ())
    );
    // Another address still joins, and its request gets answered.
    let (_ep, conn) = join_conn(&hub, "127.0.0.1").await.unwrap();
    let (code, _) = peer_error(
        request(
            &conn,
            &Message::JoinPoll(JoinPoll {
                name: "nobody".into(),
                request_secret: "s".repeat(40),
            }),
            limits(),
        )
        .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);

    // A join request larger than the join channel's frame limit is refused before it is read.
    let huge = Message::JoinRequest(JoinRequest {
        token: "tether1.x".into(),
        name: "\u{1b}[2J".repeat(200_000),
        labels: Labels::new(),
        facts: Default::default(),
        csr_pem: String::new(),
        request_secret: "s".repeat(40),
    });
    // The hub answers TooLarge and closes (a protocol violation); the close may win the race.
    let refused = match request(&conn, &huge, limits()).await {
        Err(TransportError::Peer(e)) => e.code == ErrorCode::TooLarge,
        Ok(Message::Error(e)) => e.code == ErrorCode::TooLarge,
        Err(e) => format!("{e:?}").contains("exceeds the limit of 65536 bytes"),
        Ok(other) => panic!("a huge join request was answered: {other:?}"),
    };
    assert!(refused);

    // Idle connections are closed, which frees the source's budget.
    for (_ep, c) in &held {
        tokio::time::timeout(Duration::from_secs(10), c.closed())
            .await
            .expect("an idle join connection is closed");
    }
    drop(held);
    join_conn(&hub, "127.0.0.2")
        .await
        .expect("the budget comes back");
}

/// A stolen certificate cannot be renewed in a loop: a cluster is issued at most
/// `RENEWALS_PER_DAY` certificates a day, and every one of them dies with a deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_rate_limited_and_deny_revokes_every_issued_serial() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let id = joined_identity(&hub, dir.path(), "stolen", &token).await;
    let (_ep, conn) = session(&hub, &id).await;
    let mut certs_issued = vec![id.cert_pem.clone()];
    let mut refused = 0;
    for _ in 0..RENEWALS_PER_DAY + 4 {
        let (_key, csr) = tether_agent::join::key_and_csr("stolen").unwrap();
        let req = Message::RenewRequest(RenewRequest { csr_pem: csr });
        match request(&conn, &req, limits()).await {
            Ok(Message::RenewResponse(r)) => certs_issued.push(r.cert_pem),
            other => {
                let (code, why) = peer_error(other);
                assert_eq!(code, ErrorCode::Busy, "{why}");
                assert!(why.contains("next renewal is allowed at"), "{why}");
                refused += 1;
            }
        }
    }
    assert_eq!(certs_issued.len(), RENEWALS_PER_DAY + 1);
    assert_eq!(refused, 4);
    admin.deny("stolen", "stolen certificate").await.unwrap();
    let revoked = hub
        .running()
        .state
        .store
        .read(|tx| tx.list(&tether_store::hub::REVOKED))
        .unwrap();
    for pem in &certs_issued {
        let der = certs::certs_from_pem(pem, "cert").unwrap().remove(0);
        let serial = certs::inspect_der(&der).unwrap().serial_hex;
        assert!(
            revoked.iter().any(|(s, _)| *s == serial),
            "serial {serial} was issued but is not revoked"
        );
    }
}

/// A flood of handshakes with certificates the hub refuses is counted in full but audited and
/// logged at most once per reason a second; each used to be an audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_are_counted_but_audited_sparingly() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let now = tether_hub::util::now_ms();
    let other = tether_hub::parts::pki::generate("evil-hub", &[], now).unwrap();
    let other_ca =
        tether_hub::parts::pki::CertificateAuthority::load(&other.ca_pem, &other.ca_key_pem)
            .unwrap();
    let (key, csr) = tether_agent::join::key_and_csr("nobody").unwrap();
    let forged = other_ca
        .sign_cluster(&csr, "nobody", Duration::from_secs(3600), now)
        .unwrap();
    let ca_pem = std::fs::read_to_string(hub.cfg.data_dir.ca_cert()).unwrap();
    let attempts = 40;
    for _ in 0..attempts {
        let _ = dial(&hub, session_tls(&ca_pem, &forged.cert_pem, &key)).await;
    }
    let metrics = admin.get_text("/metrics").await.unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tether_hub_handshakes_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= attempts as f64, "{metrics}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = admin
        .audit(10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "handshake_rejected")
        .count();
    assert!(
        (1..=10).contains(&rows),
        "{rows} audit rows for {attempts} refused handshakes"
    );
}

/// A batch with nothing new (everything already stored) is a resend; over and over it is a
/// loop, which the hub now shows (a coalesced audit event and a log line) instead of only
/// counting it in a fleet-wide counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_statuses_are_shown_not_only_counted() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let id = joined_identity(&hub, dir.path(), "echo", &token).await;
    admin
        .apply_work(&config_work("mine", only(&["echo"]), &["a"], "1"))
        .await
        .unwrap();
    eventually("mine is placed on echo", || {
        hub.running()
            .state
            .decisions
            .snapshot()
            .get("mine")
            .is_some_and(|d| d.selected.contains_key("echo"))
    })
    .await;
    let (_ep, conn) = session(&hub, &id).await;
    for _ in 0..3 {
        let answer = request(&conn, &batch(1, &["mine"]), limits())
            .await
            .unwrap();
        assert!(matches!(answer, Message::StatusAck(_)), "{answer:?}");
    }
    // Coalesced events reach the audit log on the next drain (about a second).
    let filter = tether_hub::api::AuditFilter {
        kind: Some("status_resent".into()),
        actor: Some("agent:echo".into()),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    loop {
        let (events, _) = admin.audit_search(&filter, None, 10).await.unwrap();
        if !events.is_empty() {
            assert!(events[0].detail.contains("already has"), "{events:#?}");
            break;
        }
        assert!(start.elapsed() < WAIT, "no status_resent event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
