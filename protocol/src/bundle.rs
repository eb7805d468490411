//! Manifest bundles on the wire: CBOR, then zstd, with a content hash over the CBOR.
//!
//! Edge links are slow and metered; Kubernetes YAML compresses 5-10x. The hash is what the hub
//! and the agent compare to decide that nothing needs to be sent.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;

/// Largest decompressed bundle an agent accepts (a zip bomb stops here, not at OOM).
pub const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
const ZSTD_LEVEL: i32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("could not encode bundle: {0}")]
    Encode(String),
    #[error("bundle is not valid zstd: {0}")]
    Compression(String),
    #[error("bundle decompresses to more than {max} bytes")]
    TooLarge { max: usize },
    #[error("bundle is not a list of manifests: {0}")]
    Decode(String),
    #[error("bundle content hash {actual} does not match the announced {expected}")]
    HashMismatch { expected: String, actual: String },
}

/// A bundle ready to send: compressed bytes plus the hash of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub compressed: Vec<u8>,
    pub raw_len: usize,
    pub hash: String,
}

pub fn content_hash(raw_cbor: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw_cbor)))
}

pub fn pack(manifests: &[Value]) -> Result<Packed, BundleError> {
    let raw = crate::encode(&manifests).map_err(|e| BundleError::Encode(e.to_string()))?;
    let compressed = zstd::bulk::compress(&raw, ZSTD_LEVEL)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    Ok(Packed {
        compressed,
        raw_len: raw.len(),
        hash: content_hash(&raw),
    })
}

/// Decompress with a hard output bound, check the hash, decode.
pub fn unpack(
    compressed: &[u8],
    expected_hash: &str,
    max: usize,
) -> Result<Vec<Value>, BundleError> {
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    let mut raw = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    if raw.len() > max {
        return Err(BundleError::TooLarge { max });
    }
    let actual = content_hash(&raw);
    if actual != expected_hash {
        return Err(BundleError::HashMismatch {
            expected: expected_hash.to_string(),
            actual,
        });
    }
    crate::decode(&raw).map_err(|e| BundleError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_hash_is_checked() {
        let m = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v".repeat(10_000)}}),
        ];
        let p = pack(&m).unwrap();
        assert!(p.compressed.len() < p.raw_len / 10);
        assert_eq!(unpack(&p.compressed, &p.hash, MAX_BUNDLE_BYTES).unwrap(), m);
        assert!(matches!(
            unpack(&p.compressed, "sha256:00", MAX_BUNDLE_BYTES),
            Err(BundleError::HashMismatch { .. })
        ));
        assert!(matches!(
            unpack(&p.compressed, &p.hash, 1000),
            Err(BundleError::TooLarge { max: 1000 })
        ));
        assert!(matches!(
            unpack(b"not zstd", &p.hash, MAX_BUNDLE_BYTES),
            Err(BundleError::Compression(_))
        ));
    }

    #[test]
    fn same_content_same_hash() {
        let a = pack(&[json!({"b": 1, "a": 2})]).unwrap();
        let b = pack(&[json!({"a": 2, "b": 1})]).unwrap();
        assert_eq!(a.hash, b.hash);
    }
}
