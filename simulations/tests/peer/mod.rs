//! Raw QUIC peers for hostile-client tests: dial the hub with any TLS configuration, speak
//! single frames, and read how the hub closed the connection.

#![allow(dead_code)]

use super::common::*;
use quinn::Connection;
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::{ErrorCode, Hello, Message, ALPN_SESSION, PROTOCOL_VERSION};
use tether_sim::fleet::{all_in_state, wait_for, LocalHub};
use tether_store::agent::{Identity, CURRENT, IDENTITY};
use tether_transport::framed::{read_frame, request};
use tether_transport::tls::{self, SwappableClientCert};
use tether_transport::{quic, Limits, TransportError};

pub fn limits() -> Limits {
    Limits {
        read_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

pub async fn dial(
    hub: &LocalHub,
    cfg: rustls::ClientConfig,
) -> Result<(quinn::Endpoint, Connection), quinn::ConnectionError> {
    let addr = hub.quic_addr();
    let endpoint = quic::client_endpoint(addr).unwrap();
    let conn = endpoint
        .connect_with(quic::client_config(cfg).unwrap(), addr, "localhost")
        .unwrap()
        .await?;
    Ok((endpoint, conn))
}

pub fn session_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> rustls::ClientConfig {
    let cert = Arc::new(SwappableClientCert::new(cert_pem, key_pem).unwrap());
    tls::session_client_config(ca_pem, cert, ALPN_SESSION).unwrap()
}

pub fn hello_msg(version: u16) -> Message {
    Message::Hello(Hello {
        protocol_version: version,
        agent_version: "test".into(),
        patches: false,
        confirmations: false,
    })
}

pub async fn joined_identity(
    hub: &LocalHub,
    dir: &std::path::Path,
    name: &str,
    token: &str,
) -> Identity {
    let a = agent(hub, dir, name, token);
    wait_for(
        &hub.admin().unwrap(),
        WAIT,
        "Ready",
        all_in_state(&names(&[name]), "Ready"),
    )
    .await
    .unwrap();
    a.stop().await.unwrap();
    let store =
        tether_store::Store::open(dir.join("agents").join(name).join("agent.redb")).unwrap();
    store
        .read(|tx| tx.get(&IDENTITY, CURRENT))
        .unwrap()
        .unwrap()
}

pub async fn session(hub: &LocalHub, id: &Identity) -> (quinn::Endpoint, Connection) {
    let (ep, conn) = dial(hub, session_tls(&id.ca_pem, &id.cert_pem, &id.key_pem))
        .await
        .unwrap();
    assert!(matches!(
        request(&conn, &hello_msg(PROTOCOL_VERSION), limits())
            .await
            .unwrap(),
        Message::HelloAck(_)
    ));
    (ep, conn)
}

/// Send raw bytes on a new stream and return the hub's answer.
pub async fn raw(conn: &Connection, bytes: &[u8], finish: bool) -> Result<Message, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    if finish {
        send.finish().unwrap();
    }
    read_frame(&mut recv, limits()).await
}

pub fn peer_error(r: Result<Message, TransportError>) -> (ErrorCode, String) {
    match r {
        Ok(Message::Error(e)) => (e.code, e.message),
        Err(TransportError::Peer(e)) => (e.code, e.message),
        other => panic!("expected an error message, got {other:?}"),
    }
}

pub async fn closed_with(conn: &Connection) -> u64 {
    match tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("hub closes the connection")
    {
        quinn::ConnectionError::ApplicationClosed(ac) => ac.error_code.into(),
        other => panic!("expected an application close, got {other}"),
    }
}
