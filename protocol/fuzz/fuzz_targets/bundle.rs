//! Bundles and patches as an agent receives them from the hub: zstd bytes (a whole bundle, or a
//! patch against content the agent holds) that decompress to CBOR manifests. The hub decides
//! every byte, so decompression must stay within its bound and decoding within its limits.
//!
//! Input: a selector byte, then the payload.
//!   0: a whole bundle (compressed); decompressed, bounded, then decoded as `unpack` does.
//!   1: raw bundle content (CBOR) decoded within the limits; what decodes packs and unpacks
//!      back to itself, and as a patch against any base.
//!   2: a hostile patch: the first byte is how much of the rest is the base.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tether_protocol::bundle::{
    check_limits, content, content_hash, decompress, pack, patch, unpack, unpatch, BundleError,
    Manifests,
};

/// Smaller than `MAX_BUNDLE_BYTES` so that a bomb costs milliseconds, not seconds, per run;
/// the bound is the same code at any size.
const MAX: usize = 1 << 20;
const SMALL: usize = 4 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => whole(payload),
        1 => raw_content(payload),
        _ => hostile_patch(payload),
    }
});

fn whole(compressed: &[u8]) {
    let raw = match decompress(compressed, MAX) {
        Ok(raw) => raw,
        Err(e) => {
            assert!(!matches!(e, BundleError::Limit(_) | BundleError::Decode(_)));
            // What does not fit in MAX does not fit in less either.
            if matches!(e, BundleError::TooLarge { .. }) {
                assert!(decompress(compressed, SMALL).is_err());
            }
            return;
        }
    };
    assert!(raw.len() <= MAX);
    // The bound cuts exactly at its value.
    match decompress(compressed, SMALL) {
        Ok(small) => assert_eq!(small, raw),
        Err(BundleError::TooLarge { max }) => assert!(max == SMALL && raw.len() > SMALL),
        Err(e) => panic!("decompressed within {MAX} but not within {SMALL}: {e}"),
    }
    // With the right hash `unpack` reaches the decoder; a wrong one never does.
    let hash = content_hash(&raw);
    let unpacked = unpack(compressed, &hash, MAX);
    assert!(matches!(
        unpack(compressed, "sha256:00", MAX),
        Err(BundleError::HashMismatch { .. })
    ));
    check_decoded(&raw, unpacked);
}

fn raw_content(raw: &[u8]) {
    let decoded: Result<Manifests, _> = tether_protocol::decode(raw);
    let Ok(Manifests(Ok(list))) = decoded else {
        return;
    };
    accepted(&list);
}

fn hostile_patch(payload: &[u8]) {
    let Some((&split, rest)) = payload.split_first() else {
        return;
    };
    let (base, p) = rest.split_at((split as usize).min(rest.len()));
    // A patch against any base stays within the bound and never panics (zstd with a
    // reference prefix is C code). The first attempt learns the hash of what the patch
    // rebuilds, from the mismatch; the second reaches the decoder with it, as a patch from an
    // honest hub would.
    let actual = match unpatch(p, base, "sha256:00", MAX) {
        Err(BundleError::HashMismatch { actual, .. }) => actual,
        Err(BundleError::TooLarge { max }) => return assert_eq!(max, MAX),
        Err(BundleError::Compression(_)) => return,
        other => panic!("a wrong hash was not refused first: {other:?}"),
    };
    match unpatch(p, base, &actual, MAX) {
        Ok(list) => accepted(&list),
        Err(BundleError::Limit(_) | BundleError::Decode(_)) => {}
        Err(e) => panic!("the same patch rebuilt different content: {e}"),
    }
}

/// `unpack`'s result against decoding the same content directly.
fn check_decoded(raw: &[u8], unpacked: Result<Vec<Value>, BundleError>) {
    let direct: Result<Manifests, _> = tether_protocol::decode(raw);
    match (direct, unpacked) {
        (Ok(Manifests(Ok(a))), Ok(b)) => {
            assert_eq!(a, b);
            accepted(&b);
        }
        (Ok(Manifests(Err(l))), Err(BundleError::Limit(m))) => assert_eq!(l, m),
        (Err(_), Err(BundleError::Decode(_))) => {}
        (d, u) => panic!("unpack and decode disagree: {d:?} / {u:?}"),
    }
}

/// Manifests an agent accepted: the hub would have packed them (the two sides agree on the
/// limits), and they survive pack/unpack and patch/unpatch unchanged.
fn accepted(list: &[Value]) {
    assert_eq!(check_limits(list), Ok(()), "decoded but over the limits");
    let raw = content(list).expect("decoded manifests encode");
    if raw.len() > 64 << 10 {
        return; // compression at level 9 dominates the run time past this
    }
    let packed = pack(list).expect("decoded manifests pack");
    assert_eq!(packed.hash, content_hash(&raw));
    let back = unpack(&packed.compressed, &packed.hash, MAX).expect("packed bundle unpacks");
    assert_eq!(back, list, "unpack(pack(m)) != m");
    let base = &raw[..raw.len() / 2];
    let p = patch(base, &raw).expect("patch");
    let back = unpatch(&p, base, &packed.hash, MAX).expect("patch applies to its base");
    assert_eq!(back, list, "unpatch(patch(m)) != m");
}
