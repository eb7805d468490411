//! A hub that loses its process loses every connection's state. With the same reset secret,
//! its next process resets the old sessions the moment an agent's packet arrives; with a
//! different secret the agent would only find out from its own timeouts.

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tether_transport::{certs, quic, tls};

struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key: String,
    client_pem: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["c1".to_string()]).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem,
        server_pem: server.pem(),
        server_key: server_key.serialize_pem(),
        client_pem: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn server(p: &Pki, addr: SocketAddr, secret: &[u8; 32]) -> quinn::Endpoint {
    let ca = certs::certs_from_pem(&p.ca_pem, "CA").unwrap().remove(0);
    let verifier = Arc::new(
        tls::HubClientVerifier::new(
            ca,
            Arc::new(tls::RevocationList::new(Vec::<String>::new())),
            Arc::new(|_| {}),
        )
        .unwrap(),
    );
    let cfg = tls::server_config(
        certs::certs_from_pem(&p.server_pem, "server").unwrap(),
        certs::key_from_pem(&p.server_key, "key").unwrap(),
        verifier,
        &[b"test"],
    )
    .unwrap();
    let ep = quic::server_endpoint(addr, cfg, secret).unwrap();
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    // Hold the connection until the peer goes.
                    conn.closed().await;
                }
            });
        }
    });
    ep
}

/// A UDP forwarder standing for "the hub's address": whatever process is behind it now.
async fn front(target: Arc<std::sync::Mutex<SocketAddr>>) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, t, c) = (front.clone(), back.clone(), target.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let to = *t.lock().unwrap();
            let _ = b.send_to(&buf[..n], to).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = back.recv_from(&mut buf).await {
            // Only the process currently at the address speaks for it.
            if from != *target.lock().unwrap() {
                continue;
            }
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// Connect, then "crash" the server: a new server process (endpoint) with `new_secret` takes
/// over the address and the old one is never heard from again. Returns how the client's
/// connection ended, if it did within `wait`.
async fn crash_and_restart(new_secret: [u8; 32], wait: Duration) -> Option<quinn::ConnectionError> {
    let p = pki();
    let secret = [7u8; 32];
    let old = server(&p, "127.0.0.1:0".parse().unwrap(), &secret);
    let target = Arc::new(std::sync::Mutex::new(old.local_addr().unwrap()));
    let addr = front(target.clone()).await;
    let cert = Arc::new(tls::SwappableClientCert::new(&p.client_pem, &p.client_key).unwrap());
    let client_cfg =
        quic::client_config(tls::session_client_config(&p.ca_pem, cert, b"test").unwrap()).unwrap();
    let client = quic::client_endpoint(addr).unwrap();
    let conn = client
        .connect_with(client_cfg, addr, "localhost")
        .unwrap()
        .await
        .unwrap();
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
