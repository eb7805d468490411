//! The one place that knows the wire codec. Swap CBOR implementations here and nowhere else.
//!
//! We use `ciborium`: maintained, and its deserializer enforces a recursion limit, so hostile
//! nesting yields an error instead of a stack overflow. See `docs/wire-format.md`.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("unknown message type {0:?}")]
    UnknownMessageType(String),
}

/// Serialize a value to CBOR bytes.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Deserialize CBOR bytes. Any input yields a value or an error, never a panic; allocations are
/// bounded by the input length because ciborium reads from a slice with a fixed scratch buffer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}
