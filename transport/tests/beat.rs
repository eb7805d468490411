//! Heartbeat datagrams over a real QUIC + mTLS connection: a plain beat is answered by the
//! server's QUIC ACK alone, a confirmed one only by its BEAT_ACK, and silence from the server
//! is a timeout, not a success.

mod common;

use common::{connect, front, pki, server_endpoint};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_transport::beat::{self, BeatError, Confirmations, Datagram};

/// A server that counts beats and acknowledges confirmed ones only while `confirming` is set.
struct Server {
    beats: Arc<AtomicU64>,
    confirming: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
    client: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

async fn setup() -> Server {
    let p = pki();
    let server = server_endpoint(&p, "127.0.0.1:0".parse().unwrap(), &[2u8; 32]);
    let blackhole = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Mutex::new(server.local_addr().unwrap()));
    let addr = front(target, blackhole.clone()).await;
    let beats = Arc::new(AtomicU64::new(0));
    let confirming = Arc::new(AtomicBool::new(true));
    let (accept, b, c) = (server.clone(), beats.clone(), confirming.clone());
    tokio::spawn(async move {
        let conn = accept.accept().await.unwrap().await.unwrap();
        let mut gate = beat::Gate::default();
        while let Ok(d) = conn.read_datagram().await {
            if let Datagram::Beat(confirm) = Datagram::parse(&d) {
                if gate.admit(Instant::now()) {
                    b.fetch_add(1, Ordering::SeqCst);
                    if let (Some(n), true) = (confirm, c.load(Ordering::SeqCst)) {
                        beat::acknowledge(&conn, n);
                    }
                }
            }
        }
    });
    let (client_ep, client) = connect(&p, addr).await;
    Server {
        beats,
        confirming,
        blackhole,
        client,
        _endpoints: (server, client_ep),
    }
}

#[tokio::test]
async fn a_plain_beat_arrives_with_two_packets_and_no_answer_datagram() {
    let s = setup().await;
    let before = s.client.stats();
    let r = beat::send(&s.client, None, Duration::from_secs(5)).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    let after = s.client.stats();
    assert_eq!(s.beats.load(Ordering::SeqCst), 1, "the server saw one beat");
    assert_eq!(
        after.frame_tx.datagram - before.frame_tx.datagram,
        1,
        "sent once: nothing was lost"
    );
    assert_eq!(
        after.frame_rx.datagram, before.frame_rx.datagram,
        "a plain beat gets no datagram back, only the QUIC ACK"
    );
}

#[tokio::test]
async fn a_confirmed_beat_returns_the_send_time_of_the_acknowledged_one() {
    let s = setup().await;
    let (acks, acked) = beat::ack_channel();
    tokio::spawn(beat::agent_datagrams(s.client.clone(), acks));
    let mut confirmations = Confirmations::new(acked);
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = beat::send(&s.client, Some(&mut confirmations), Duration::from_secs(5)).await;
        let t1 = Instant::now();
        match r {
            Ok(Some(at)) => assert!(t0 <= at && at <= t1, "contact outside the exchange"),
            other => panic!("expected a confirmation, got {other:?}"),
        }
        // The gate admits one beat per 100 ms.
        tokio::time::sleep(beat::MIN_SPACING).await;
    }
    assert_eq!(s.beats.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_confirmed_beat_is_not_satisfied_by_the_transport_ack_alone() {
    let s = setup().await;
    s.confirming.store(false, Ordering::SeqCst);
    let (acks, acked) = beat::ack_channel();
    tokio::spawn(beat::agent_datagrams(s.client.clone(), acks));
    let mut confirmations = Confirmations::new(acked);
    let r = beat::send(
        &s.client,
        Some(&mut confirmations),
        Duration::from_millis(1500),
    )
    .await;
    assert!(matches!(r, Err(BeatError::Timeout(_))), "{r:?}");
    assert!(
        s.beats.load(Ordering::SeqCst) >= 2,
        "an unanswered beat is sent again"
    );
}

#[tokio::test]
async fn silence_from_the_server_is_a_timeout_and_beats_resume_after_it() {
    let s = setup().await;
    // One clean beat: the path is validated and the RTT known.
    beat::send(&s.client, None, Duration::from_secs(5))
        .await
        .unwrap();
    s.blackhole.store(true, Ordering::SeqCst);
    let r = beat::send(&s.client, None, Duration::from_millis(1500)).await;
    assert!(matches!(r, Err(BeatError::Timeout(_))), "{r:?}");
    s.blackhole.store(false, Ordering::SeqCst);
    let r = beat::send(&s.client, None, Duration::from_secs(5)).await;
    assert!(matches!(r, Ok(None)), "after the heal: {r:?}");
}
