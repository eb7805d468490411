//! Shared by the transport integration tests: a throwaway CA with server and client
//! certificates, a server endpoint with the hub's tuning, and a UDP front that can swap the
//! server behind it or drop everything the server sends.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tether_transport::{certs, quic, tls};

pub struct Pki {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

pub fn pki() -> Pki {
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

/// A hub-like endpoint (our transport tuning, mTLS against the test CA); no accept loop.
pub fn server_endpoint(p: &Pki, addr: SocketAddr, secret: &[u8; 32]) -> quinn::Endpoint {
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
    quic::server_endpoint(addr, cfg, secret).unwrap()
}

/// An agent-like connection to `addr` (our transport tuning and client certificate), with the
/// endpoint that must outlive it.
pub async fn connect(p: &Pki, addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let cert = Arc::new(tls::SwappableClientCert::new(&p.client_pem, &p.client_key).unwrap());
    let client_cfg =
        quic::client_config(tls::session_client_config(&p.ca_pem, cert, b"test").unwrap()).unwrap();
    let client = quic::client_endpoint(addr).unwrap();
    let conn = client
        .connect_with(client_cfg, addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    (client, conn)
}

/// A UDP forwarder standing for "the hub's address": whatever process is behind it now.
/// While `blackhole` is set, nothing from the server reaches the client.
pub async fn front(target: Arc<Mutex<SocketAddr>>, blackhole: Arc<AtomicBool>) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let client = Arc::new(Mutex::new(None::<SocketAddr>));
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
            if from != *target.lock().unwrap() || blackhole.load(Ordering::SeqCst) {
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
