//! Frames over QUIC streams: every read has a size limit and a time limit.

use quinn::{Connection, RecvStream, SendStream};
use std::time::Duration;
use tether_protocol::frame::{self, FrameError};
use tether_protocol::{ErrorMsg, Message, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    /// Upper bound for receiving one whole frame, so a stalled peer cannot hold a stream open.
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("stream closed before a full frame arrived")]
    Truncated,
    #[error("peer answered with an error: {0}")]
    Peer(ErrorMsg),
}

pub async fn write_frame(
    send: &mut SendStream,
    msg: &Message,
    limits: Limits,
) -> Result<(), TransportError> {
    let bytes = frame::encode_frame(msg, limits.max_frame)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Write one frame and finish the stream (no more data from us on it).
pub async fn send_last(
    send: &mut SendStream,
    msg: &Message,
    limits: Limits,
) -> Result<(), TransportError> {
    write_frame(send, msg, limits).await?;
    // Finishing an already-reset stream is not worth reporting: the peer is gone.
    let _ = send.finish();
    Ok(())
}

/// Send a final message, wait (bounded) until the peer has it, then close the connection.
///
/// Closing right after writing would let QUIC discard the unacknowledged stream data, and
/// the peer would see a bare close instead of the explanation.
pub async fn send_last_and_close(
    conn: &Connection,
    send: &mut SendStream,
    msg: &Message,
    limits: Limits,
    close_code: u32,
    reason: &str,
) {
    if send_last(send, msg, limits).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
    }
    conn.close(close_code.into(), reason.as_bytes());
}

/// Upper bound on how long a refusal waits for its explanation to be acknowledged.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

pub async fn read_frame(recv: &mut RecvStream, limits: Limits) -> Result<Message, TransportError> {
    match tokio::time::timeout(
        limits.read_timeout,
        read_frame_inner(recv, limits.max_frame),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout(limits.read_timeout)),
    }
}

async fn read_frame_inner(recv: &mut RecvStream, max: usize) -> Result<Message, TransportError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(read_err)?;
    // The length is checked before any body buffer is allocated.
    let len = frame::body_len(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_err)?;
    Ok(frame::decode_message(&body)?)
}

fn read_err(e: quinn::ReadExactError) -> TransportError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::Truncated,
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            TransportError::Connection(c)
        }
        quinn::ReadExactError::ReadError(other) => TransportError::Read(other.to_string()),
    }
}

/// One request/response exchange on a fresh bidirectional stream. A peer `Error` message is
/// returned as [`TransportError::Peer`] so callers handle one error path.
pub async fn request(
    conn: &Connection,
    msg: &Message,
    limits: Limits,
) -> Result<Message, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send_last(&mut send, msg, limits).await?;
    let response = read_frame(&mut recv, limits);
    tokio::pin!(response);
    // An answer that is late is probably stuck behind a lost packet: nudge (see `nudge`).
    // The spacing doubles, so a hub that is merely slow is not flooded by its waiting agents.
    let mut every = crate::nudge::interval(conn.rtt());
    let next = tokio::time::sleep(every);
    tokio::pin!(next);
    let answer = loop {
        tokio::select! {
            r = &mut response => break r?,
            _ = &mut next => {
                crate::nudge::ping(conn);
                every = crate::nudge::backoff(every);
                next.as_mut().reset(tokio::time::Instant::now() + every);
            }
        }
    };
    match answer {
        Message::Error(e) => Err(TransportError::Peer(e)),
        other => Ok(other),
    }
}
