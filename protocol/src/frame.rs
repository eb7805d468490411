//! Length-prefixed frames: a 4-byte big-endian length, then one CBOR-encoded [`Message`].
//!
//! Sans-IO: the transport reads the header, asks [`body_len`] whether to read the body at all,
//! and hands the body to [`decode_message`].

use crate::{codec, CodecError, Message, MESSAGE_KINDS};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Default hard cap on a frame body. Configurable per endpoint; never unbounded.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encode a message as one frame (header + body), refusing bodies over `max`.
pub fn encode_frame(msg: &Message, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = codec::encode(msg)?;
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max,
    })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validate a frame header and return the body length to read.
pub fn body_len(header: [u8; FRAME_HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decode a frame body into a message. Unknown message kinds are a distinct error so that the
/// peer can be told precisely what went wrong.
pub fn decode_message(body: &[u8]) -> Result<Message, FrameError> {
    match codec::decode::<Message>(body) {
        Ok(msg) => Ok(msg),
        Err(err) => {
            // Only on the error path: look at the tag alone to tell "newer peer" from "garbage".
            #[derive(serde::Deserialize)]
            struct Envelope {
                #[serde(rename = "type")]
                kind: String,
            }
            match codec::decode::<Envelope>(body) {
                Ok(env) if !MESSAGE_KINDS.contains(&env.kind.as_str()) => {
                    Err(CodecError::UnknownMessageType(env.kind).into())
                }
                _ => Err(err.into()),
            }
        }
    }
}

/// Decode a complete frame held in memory (header + body). Used by tests and the simulator.
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<Message, FrameError> {
    let header: [u8; FRAME_HEADER_LEN] = bytes
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Empty)?;
    let len = body_len(header, max)?;
    let body = bytes
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)
        .ok_or_else(|| CodecError::Decode("truncated frame".into()))?;
    decode_message(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            patches: false,
            confirmations: false,
        })
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&hello(), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(decode_frame(&frame, DEFAULT_MAX_FRAME).unwrap(), hello());
    }

    #[test]
    fn oversize_header_is_refused_before_reading_the_body() {
        let err = body_len((5u32 * 1024 * 1024).to_be_bytes(), DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert!(matches!(body_len([0; 4], 10), Err(FrameError::Empty)));
    }

    #[test]
    fn oversize_message_is_refused_when_encoding() {
        let err = encode_frame(&hello(), 3).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 3, .. }));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let frame = encode_frame(&hello(), DEFAULT_MAX_FRAME).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode_frame(&frame[..cut], DEFAULT_MAX_FRAME).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_message_type_is_a_typed_error() {
        #[derive(serde::Serialize)]
        #[serde(tag = "type", content = "body")]
        enum Future {
            TeleportCluster { to: String },
        }
        let body = codec::encode(&Future::TeleportCluster { to: "mars".into() }).unwrap();
        assert!(matches!(
            decode_message(&body),
            Err(FrameError::Codec(CodecError::UnknownMessageType(k))) if k == "TeleportCluster"
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 100k nested CBOR arrays of length 1, then a null.
        let mut body = vec![0x81u8; 100_000];
        body.push(0xf6);
        assert!(decode_message(&body).is_err());
        // Same inside a plausible envelope: {"type": "Hello", "body": [[[[...]]]]}
        let mut env =
            codec::encode(&std::collections::BTreeMap::from([("type", "Hello")])).unwrap();
        env[0] = 0xa2; // map of 2
        env.extend_from_slice(&codec::encode(&"body").unwrap());
        env.extend_from_slice(&body);
        assert!(decode_message(&env).is_err());
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // A byte string claiming 2^63 bytes, and an array claiming 2^32 elements.
        let lies: [&[u8]; 2] = [
            &[0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x9b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        ];
        for lie in lies {
            assert!(decode_message(lie).is_err());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame(&bytes, 1024);
            let _ = decode_message(&bytes);
        }

        #[test]
        fn mutated_valid_frames_never_panic(idx in 0usize..64, val in any::<u8>()) {
            let mut frame = encode_frame(&hello(), DEFAULT_MAX_FRAME).unwrap();
            let i = idx % frame.len();
            frame[i] = val;
            let _ = decode_frame(&frame, DEFAULT_MAX_FRAME);
        }
    }
}
