//! Red-team findings, end to end: a hostile client speaking the wire format against a real hub
//! on loopback. Each test failed before the fix it names.

mod common;
mod peer;

use common::*;
use peer::*;
use std::time::Duration;
use tether_protocol::{close_code, Labels, PROTOCOL_VERSION};
use tether_transport::framed::request;

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
