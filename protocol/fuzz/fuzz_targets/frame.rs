//! Frames and messages as a peer sends them: every byte is the peer's choice (an agent before
//! it has authenticated, on the join channel; a hub or whoever holds its key, on a session).
//! Properties: decoding never panics; a decoded message encodes, and decodes back to itself
//! (what the hub relays or stores is what it received).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::frame::{decode_frame, decode_message, encode_frame, FrameError};
use tether_protocol::{codec, CodecError, Message, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // The same bytes three ways: a whole frame (header + body), a body the transport already
    // cut out, and the codec underneath.
    let framed = decode_frame(data, DEFAULT_MAX_FRAME);
    let body = decode_message(data);
    let raw = codec::decode::<Message>(data);

    match (&body, &raw) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode_message and codec::decode disagree"),
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
            panic!("decode_message and codec::decode disagree on success: {body:?} / {raw:?}")
        }
        // The unknown-kind error must name a kind this build does not know.
        (Err(FrameError::Codec(CodecError::UnknownMessageType(k))), Err(_)) => {
            assert!(!tether_protocol::MESSAGE_KINDS.contains(&k.as_str()), "{k}")
        }
        (Err(_), Err(_)) => {}
    }

    // A frame decodes as its body does, when the header announces exactly the rest.
    if data.len() > FRAME_HEADER_LEN {
        let announced = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if announced == data.len() - FRAME_HEADER_LEN {
            let inner = decode_message(&data[FRAME_HEADER_LEN..]);
            assert_eq!(framed.is_ok(), inner.is_ok());
            if let (Ok(a), Ok(b)) = (&framed, &inner) {
                assert_eq!(a, b);
            }
        }
    }

    for msg in [framed.ok(), body.ok()].into_iter().flatten() {
        round_trip(&msg);
    }
});

fn round_trip(msg: &Message) {
    let frame = encode_frame(msg, DEFAULT_MAX_FRAME).expect("a decoded message re-encodes");
    let again = decode_frame(&frame, DEFAULT_MAX_FRAME).expect("an encoded frame decodes");
    assert_eq!(&again, msg, "decode(encode(m)) != m");
}
