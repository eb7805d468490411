//! Heartbeats as QUIC datagrams: what an idle session costs on a metered link.
//!
//! A heartbeat on a stream is a round trip of ~490 B (stream open, request and answer frames,
//! their ACKs, stream credit): 177 KB per agent-hour at one every 10 s. Between two heartbeats
//! nothing changes but the fact that the agent is there, so after the first one of a session
//! (which carries the facts, as does any later one whose facts changed) the agent sends a
//! datagram instead:
//!
//! - `BEAT` `[0x03]`: "still here". The hub records a heartbeat; QUIC's own ACK of the packet
//!   is the only answer. Two packets, what a keep-alive costs, and it *is* the keep-alive:
//!   quinn restarts its keep-alive timer on every packet received, so an agent beating more
//!   often than [`crate::quic::KEEP_ALIVE`] sends no keep-alives at all.
//! - `BEAT_CONFIRM` `[0x04, nonce: u32 big-endian]`: the same, and the hub answers `BEAT_ACK`
//!   `[0x05, nonce]` once it has recorded the beat. An agent that holds a singleton needs that
//!   proof: its fencing deadline counts from the send time of the last heartbeat the hub
//!   confirmed (`tether_protocol::fencing`). Three packets.
//!
//! Datagrams are not retransmitted. A plain beat counts as arrived once *any* packet of the
//! hub's arrives after it (its ACK, normally), a confirmed one once its `BEAT_ACK` does; until
//! then it is sent again with the nudges' spacing (a few round trips, doubling), and if the read
//! timeout passes first the session is lost, exactly as a stream heartbeat's timeout was.
//!
//! Datagram payloads are tiny and bounded by [`crate::nudge::DATAGRAM_BUFFER`]; the hub records
//! at most one beat per [`MIN_SPACING`] per connection, so a peer cannot turn beats into a flood
//! of health updates or answers.

use bytes::Bytes;
use quinn::{Connection, SendDatagramError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const PING: u8 = 0x01;
const PONG: u8 = 0x02;
const BEAT: u8 = 0x03;
const BEAT_CONFIRM: u8 = 0x04;
const BEAT_ACK: u8 = 0x05;

/// The hub records (and answers) at most one beat per this interval and connection. Below the
/// nudges' smallest spacing (300 ms), so an agent's re-sent beat is never the one dropped.
pub const MIN_SPACING: Duration = Duration::from_millis(100);

/// How often a plain beat's sender looks for a packet from the hub.
const RECEIVE_POLL: Duration = Duration::from_millis(20);

/// What a received datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A nudge (see [`crate::nudge`]).
    Ping,
    Pong,
    /// A heartbeat; `Some(nonce)` asks for a [`Datagram::BeatAck`].
    Beat(Option<u32>),
    BeatAck(u32),
    /// Anything else: ignored (reserved for later versions).
    Other,
}

impl Datagram {
    pub fn parse(d: &[u8]) -> Self {
        let nonce = |rest: &[u8]| <[u8; 4]>::try_from(rest).ok().map(u32::from_be_bytes);
        match d.split_first() {
            Some((&PING, [])) => Datagram::Ping,
            Some((&PONG, [])) => Datagram::Pong,
            Some((&BEAT, [])) => Datagram::Beat(None),
            Some((&BEAT_CONFIRM, rest)) => {
                nonce(rest).map_or(Datagram::Other, |n| Datagram::Beat(Some(n)))
            }
            Some((&BEAT_ACK, rest)) => nonce(rest).map_or(Datagram::Other, Datagram::BeatAck),
            _ => Datagram::Other,
        }
    }

    pub fn encode(self) -> Bytes {
        match self {
            Datagram::Ping => Bytes::from_static(&[PING]),
            Datagram::Pong => Bytes::from_static(&[PONG]),
            Datagram::Beat(None) => Bytes::from_static(&[BEAT]),
            Datagram::Beat(Some(n)) => tagged(BEAT_CONFIRM, n),
            Datagram::BeatAck(n) => tagged(BEAT_ACK, n),
            Datagram::Other => Bytes::new(),
        }
    }
}

fn tagged(tag: u8, nonce: u32) -> Bytes {
    let mut b = Vec::with_capacity(5);
    b.push(tag);
    b.extend_from_slice(&nonce.to_be_bytes());
    Bytes::from(b)
}

/// At most one event per `spacing`: which beats of one connection the hub records, which
/// PINGs it answers.
#[derive(Debug)]
pub struct Gate {
    spacing: Duration,
    last: Option<Instant>,
}

impl Gate {
    pub fn new(spacing: Duration) -> Self {
        Self {
            spacing,
            last: None,
        }
    }

    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < self.spacing)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

impl Default for Gate {
    /// The hub's gate for beats.
    fn default() -> Self {
        Self::new(MIN_SPACING)
    }
}

/// Hub side: answer a confirmed beat, after it was recorded.
pub fn acknowledge(conn: &Connection, nonce: u32) {
    let _ = conn.send_datagram(Datagram::BeatAck(nonce).encode());
}

#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// The peer does not take datagrams (it did not offer them in the handshake): use stream
    /// heartbeats.
    #[error("the hub does not accept datagrams")]
    Unsupported,
    #[error("no answer from the hub within {0:?}")]
    Timeout(Duration),
    #[error("session lost: {0}")]
    Lost(quinn::ConnectionError),
}

/// Agent side: the highest nonce the hub has acknowledged on this connection, fed by
/// [`agent_datagrams`].
pub fn ack_channel() -> (watch::Sender<u32>, watch::Receiver<u32>) {
    watch::channel(0)
}

/// Agent side: answer the hub's nudges and collect its `BEAT_ACK`s until the connection ends.
/// The only reader of the connection's datagrams.
pub async fn agent_datagrams(conn: Connection, acks: watch::Sender<u32>) -> quinn::ConnectionError {
    let mut nudges = crate::nudge::Responder::default();
    loop {
        let d = match conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => return e,
        };
        match Datagram::parse(&d) {
            Datagram::BeatAck(n) => {
                acks.send_if_modified(|highest| {
                    let newer = n > *highest;
                    if newer {
                        *highest = n;
                    }
                    newer
                });
            }
            other => nudges.on_datagram(&conn, other, Instant::now()),
        }
    }
}

/// Agent side: the nonces of confirmed beats, one sequence per connection.
#[derive(Debug)]
pub struct Confirmations {
    acks: watch::Receiver<u32>,
    next: u32,
}

impl Confirmations {
    pub fn new(acks: watch::Receiver<u32>) -> Self {
        Self { acks, next: 1 }
    }
}

/// Send one heartbeat and wait until the hub shows it has it (see the module docs). With
/// `confirm`, returns the send time of the beat the hub acknowledged: the agent's proof of
/// contact. Without, returns `None` once any packet of the hub's followed the beat.
pub async fn send(
    conn: &Connection,
    confirm: Option<&mut Confirmations>,
    timeout: Duration,
) -> Result<Option<Instant>, BeatError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut spacing = crate::nudge::interval(conn.rtt());
    match confirm {
        None => {
            // quinn says nothing when a packet arrives, so look: often enough that the beat is
            // done about when the ACK is in (one RTT plus the hub's ACK delay, 25 ms), not
            // after the re-send spacing.
            let received = conn.stats().udp_rx.datagrams;
            transmit(conn, Datagram::Beat(None))?;
            let mut resend_at = tokio::time::Instant::now() + spacing;
            loop {
                let wake = (tokio::time::Instant::now() + RECEIVE_POLL).min(deadline);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    e = conn.closed() => return Err(BeatError::Lost(e)),
                }
                if conn.stats().udp_rx.datagrams > received {
                    return Ok(None);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(BeatError::Timeout(timeout));
                }
                if now >= resend_at {
                    transmit(conn, Datagram::Beat(None))?;
                    spacing = crate::nudge::backoff(spacing);
                    resend_at = now + spacing;
                }
            }
        }
        Some(c) => {
            let first = c.next;
            let mut sent: Vec<(u32, Instant)> = Vec::new();
            loop {
                let nonce = c.next;
                c.next = c.next.saturating_add(1);
                sent.push((nonce, Instant::now()));
                transmit(conn, Datagram::Beat(Some(nonce)))?;
                let wake = (tokio::time::Instant::now() + spacing).min(deadline);
                loop {
                    let acked = *c.acks.borrow_and_update();
                    if acked >= first {
                        // The newest beat the hub has confirmed: its send time is the contact.
                        if let Some(&(_, at)) = sent.iter().rev().find(|(n, _)| *n <= acked) {
                            return Ok(Some(at));
                        }
                    }
                    tokio::select! {
                        changed = c.acks.changed() => {
                            if changed.is_err() {
                                return Err(BeatError::Lost(conn.closed().await));
                            }
                        }
                        _ = tokio::time::sleep_until(wake) => break,
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(BeatError::Timeout(timeout));
                }
                spacing = crate::nudge::backoff(spacing);
            }
        }
    }
}

fn transmit(conn: &Connection, d: Datagram) -> Result<(), BeatError> {
    match conn.send_datagram(d.encode()) {
        Ok(()) => Ok(()),
        Err(SendDatagramError::ConnectionLost(e)) => Err(BeatError::Lost(e)),
        Err(_) => Err(BeatError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_malformed_ones_are_other() {
        for d in [
            Datagram::Ping,
            Datagram::Pong,
            Datagram::Beat(None),
            Datagram::Beat(Some(7)),
            Datagram::Beat(Some(u32::MAX)),
            Datagram::BeatAck(1),
        ] {
            assert_eq!(Datagram::parse(&d.encode()), d);
        }
        for bad in [
            &[][..],
            &[BEAT, 0],
            &[BEAT_CONFIRM, 0, 0, 1],
            &[BEAT_CONFIRM, 0, 0, 0, 1, 2],
            &[BEAT_ACK],
            &[PING, PING],
            &[0xff],
        ] {
            assert_eq!(Datagram::parse(bad), Datagram::Other, "{bad:?}");
        }
    }

    #[test]
    fn the_gate_admits_one_beat_per_spacing() {
        let mut g = Gate::default();
        let t0 = Instant::now();
        assert!(g.admit(t0));
        assert!(!g.admit(t0 + MIN_SPACING / 2));
        assert!(g.admit(t0 + MIN_SPACING));
    }
}
