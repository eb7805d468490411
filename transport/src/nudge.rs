//! Nudges: keep QUIC loss recovery from stalling while a request waits for its answer.
//!
//! QUIC finds a lost packet only when a *later* packet is acknowledged. When the lost packet is
//! the last one a side sends (a request, or its response) nothing later exists, so recovery
//! falls back to the probe timeout, which doubles after every probe that is lost *or whose ACK
//! is lost*. At 30% loss each way half the probes fail, and a request stalls past its 10 s
//! read timeout about once in 50-100 exchanges; the session is then torn down and rebuilt with
//! a full handshake over the same bad link.
//!
//! While a request waits, the requester therefore sends a one-byte PING datagram after a few
//! round trips (then at doubling intervals), and the peer answers each with a PONG datagram. Both are ack-eliciting, so
//! the ACK of either tells the sender of the lost packet that a later one arrived: it
//! retransmits after one round trip instead of after an exponentially growing timeout. Idle
//! sessions send nothing (the idle-cost budget is untouched); a healthy request answered
//! within the interval sends nothing either.
//!
//! A peer that does not accept datagrams (an older version) is simply not nudged.

use crate::beat::Datagram;
use quinn::Connection;
use std::time::{Duration, Instant};

/// Bytes of incoming datagrams quinn buffers per connection. Nudges are one byte and answered
/// at once, so this only bounds what a misbehaving peer can park in memory (quinn drops the
/// oldest beyond it). It is also the largest datagram the peer may send.
pub const DATAGRAM_BUFFER: usize = 64;

/// At most one PONG per this interval and connection: a peer cannot turn us into an amplifier.
const PONG_SPACING: Duration = Duration::from_millis(100);

/// How long a request waits before nudging, and between nudges: a few round trips (an answer
/// that takes longer is likely stuck), never more often than every 300 ms, never rarer than
/// every 2 s.
pub fn interval(rtt: Duration) -> Duration {
    (rtt * 3).clamp(Duration::from_millis(300), Duration::from_secs(2))
}

/// The next spacing after a nudge went unanswered: double, at most [`MAX_SPACING`].
pub fn backoff(spacing: Duration) -> Duration {
    (spacing * 2).min(MAX_SPACING)
}

/// Within a 10 s read timeout this still leaves several nudges (0.3, 0.6, 1.2, 2.4, 4, 4 s).
pub const MAX_SPACING: Duration = Duration::from_secs(4);

/// Send one PING. Failures are ignored: a peer without datagram support or a closing
/// connection is not an error of the request being nudged.
pub fn ping(conn: &Connection) {
    let _ = conn.send_datagram(Datagram::Ping.encode());
}

/// Answers PINGs with PONGs, rate-limited per connection.
#[derive(Debug)]
pub struct Responder {
    pongs: crate::beat::Gate,
}

impl Default for Responder {
    fn default() -> Self {
        Self {
            pongs: crate::beat::Gate::new(PONG_SPACING),
        }
    }
}

impl Responder {
    /// Handle one received datagram: answer it on `conn` if it deserves a PONG.
    pub fn on_datagram(&mut self, conn: &Connection, datagram: Datagram, now: Instant) {
        if self.wants_pong(datagram, now) {
            let _ = conn.send_datagram(Datagram::Pong.encode());
        }
    }

    /// Anything but a PING is ignored: PONGs end here (no ping-pong loop) and other payloads
    /// are reserved for later versions.
    fn wants_pong(&mut self, datagram: Datagram, now: Instant) -> bool {
        datagram == Datagram::Ping && self.pongs.admit(now)
    }
}

/// Answer the peer's nudges until the connection ends; returns why it ended.
pub async fn answer(conn: Connection) -> quinn::ConnectionError {
    let mut responder = Responder::default();
    loop {
        match conn.read_datagram().await {
            Ok(d) => responder.on_datagram(&conn, Datagram::parse(&d), Instant::now()),
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_few_round_trips_within_bounds() {
        assert_eq!(
            interval(Duration::from_millis(1)),
            Duration::from_millis(300)
        );
        assert_eq!(
            interval(Duration::from_millis(200)),
            Duration::from_millis(600)
        );
        assert_eq!(interval(Duration::from_secs(5)), Duration::from_secs(2));
    }

    #[test]
    fn spacing_doubles_up_to_its_cap() {
        assert_eq!(
            backoff(Duration::from_millis(300)),
            Duration::from_millis(600)
        );
        assert_eq!(backoff(Duration::from_secs(3)), MAX_SPACING);
    }

    #[test]
    fn only_pings_are_answered_and_at_a_bounded_rate() {
        let mut r = Responder::default();
        let t0 = Instant::now();
        let (ping, pong) = (Datagram::Ping.encode(), Datagram::Pong.encode());
        let mut wants = |bytes: &[u8], at| r.wants_pong(Datagram::parse(bytes), at);
        assert!(!wants(&pong, t0), "a pong is never answered");
        assert!(!wants(&[ping[0], 0], t0), "unknown payloads are ignored");
        assert!(wants(&ping, t0));
        assert!(!wants(&ping, t0 + PONG_SPACING / 2));
        assert!(wants(&ping, t0 + PONG_SPACING));
    }
}
