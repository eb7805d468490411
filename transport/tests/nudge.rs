//! While a request waits, the requester nudges and the peer answers each nudge: the traffic
//! that lets QUIC find a lost answer without waiting for a backed-off probe timer. (How much
//! sooner is a measurement, in docs/benchmarks.md, not a test.)

mod common;

use common::{connect, front, pki, server_endpoint};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::{Hello, HelloAck, Message, PROTOCOL_VERSION};
use tether_transport::framed::{read_frame, request, send_last};
use tether_transport::{nudge, Limits};

fn hello() -> Message {
    Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "test".into(),
        patches: false,
        confirmations: false,
    })
}

#[tokio::test]
async fn a_blackholed_response_is_recovered_through_nudges() {
    let p = pki();
    let server = server_endpoint(&p, "127.0.0.1:0".parse().unwrap(), &[1u8; 32]);
    let blackhole = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Mutex::new(server.local_addr().unwrap()));
    let addr = front(target, blackhole.clone()).await;
    let (answered_tx, mut answered) = tokio::sync::mpsc::channel(2);
    let accept = server.clone();
    let (server_conn_tx, server_conn) = tokio::sync::oneshot::channel();
    // Answers every request with a HelloAck and reports each answer sent.
    tokio::spawn(async move {
        let conn = accept.accept().await.unwrap().await.unwrap();
        let _ = server_conn_tx.send(conn.clone());
        tokio::spawn(nudge::answer(conn.clone()));
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            read_frame(&mut recv, Limits::default()).await.unwrap();
            let ack = Message::HelloAck(HelloAck {
                protocol_version: PROTOCOL_VERSION,
                hub_version: "test".into(),
                heartbeat_interval_ms: 1000,
                datagram_heartbeats: false,
                hub_time_ms: 0,
            });
            send_last(&mut send, &ack, Limits::default()).await.unwrap();
            answered_tx.send(()).await.unwrap();
        }
    });
    let (_client, conn) = connect(&p, addr).await;
    // One clean exchange first: the handshake is confirmed and the RTT known.
    request(&conn, &hello(), Limits::default()).await.unwrap();
    answered.recv().await.unwrap();
    let before = conn.stats();

    // The next answer (and whatever else the server sends) vanishes for 3 s: at loopback RTTs
    // the server's probe timer has backed off to seconds by then.
    blackhole.store(true, Ordering::SeqCst);
    let heal = {
        let blackhole = blackhole.clone();
        tokio::spawn(async move {
            answered.recv().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            blackhole.store(false, Ordering::SeqCst);
        })
    };
    let reply = request(&conn, &hello(), Limits::default()).await;
    heal.await.unwrap();
    assert!(
        matches!(reply, Ok(Message::HelloAck(_))),
        "expected the answer after the heal, got {reply:?}"
    );
    let after = conn.stats();
    assert!(
        after.frame_tx.datagram > before.frame_tx.datagram,
        "the waiting requester never nudged"
    );
    // Counted where the PONGs are sent: while the blackhole lasts they are dropped on the way,
    // and whether one sent after the heal arrives before the answer does is a race.
    let server_conn = server_conn.await.unwrap();
    assert!(
        server_conn.stats().frame_tx.datagram > 0,
        "the server never answered a nudge"
    );
}
