//! A hub that loses its process loses every connection's state. With the same reset secret,
//! its next process resets the old sessions the moment an agent's packet arrives; with a
//! different secret the agent would only find out from its own timeouts.

mod common;

use common::{connect, front, pki, server_endpoint, Pki};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server that holds every connection until the peer goes.
fn server(p: &Pki, addr: SocketAddr, secret: &[u8; 32]) -> quinn::Endpoint {
    let ep = server_endpoint(p, addr, secret);
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    ep
}

/// Connect, then "crash" the server: a new server process (endpoint) with `new_secret` takes
/// over the address and the old one is never heard from again. Returns how the client's
/// connection ended, if it did within `wait`.
async fn crash_and_restart(new_secret: [u8; 32], wait: Duration) -> Option<quinn::ConnectionError> {
    let p = pki();
    let secret = [7u8; 32];
    let old = server(&p, "127.0.0.1:0".parse().unwrap(), &secret);
    let target = Arc::new(Mutex::new(old.local_addr().unwrap()));
    let addr = front(target.clone(), Arc::default()).await;
    let (_client, conn) = connect(&p, addr).await;
    let new = server(&p, "127.0.0.1:0".parse().unwrap(), &new_secret);
    *target.lock().unwrap() = new.local_addr().unwrap();
    // The agent sends something (a heartbeat); the new process has no state for it.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(b"heartbeat").await;
    let ended = tokio::time::timeout(wait, conn.closed()).await.ok();
    drop(old);
    ended
}

#[tokio::test]
async fn a_restarted_hub_with_the_same_secret_resets_old_sessions_at_once() {
    let ended = crash_and_restart([7u8; 32], Duration::from_secs(3)).await;
    assert!(
        matches!(ended, Some(quinn::ConnectionError::Reset)),
        "expected a stateless reset, got {ended:?}"
    );
}

#[tokio::test]
async fn without_the_secret_the_old_session_lingers() {
    // The control: a different secret cannot produce a valid reset, so the client waits.
    let ended = crash_and_restart([8u8; 32], Duration::from_secs(3)).await;
    assert!(ended.is_none(), "session ended anyway: {ended:?}");
}
