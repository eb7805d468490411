//! Manifest bundles on the wire: CBOR, then zstd, with a content hash over the CBOR.
//!
//! Edge links are slow and metered; Kubernetes YAML compresses 5-10x. The hash is what the hub
//! and the agent compare to decide that nothing needs to be sent.
//!
//! A bundle is hostile input for the agent: a hub (or whoever holds its key) decides what is in
//! it. Bounding the decompressed bytes is not enough, because one CBOR byte (`0x80`, an empty
//! array) becomes a 32-byte `serde_json::Value` and several bytes of YAML: 32 MiB of such bytes
//! compress to about a kilobyte and used to cost the agent more than 2 GB. So decoding also
//! bounds the number of values and their nesting ([`DecodeLimits`]), and stops allocating the
//! moment a limit is crossed.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::io::Read;

/// Largest decompressed bundle an agent accepts (a zip bomb stops here, not at OOM).
pub const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
/// Values (every scalar, list and map, map keys not counted) in one bundle. One line of
/// Kubernetes YAML is roughly one value, so this admits some 30 MB of real YAML while capping
/// the decoded tree at about 100 MB in the worst case (maps of tiny keys); 32 MiB of empty lists measured 72 MB peak RSS
/// for a whole delivery (`edge-agent/examples/bundle_bomb_rss.rs`).
pub const MAX_BUNDLE_ELEMENTS: usize = 1_000_000;
/// Nesting depth of a value inside a manifest (the manifest object itself is depth 1). CRD
/// validation schemas are the deepest real manifests and stay well below this; rendering cost
/// grows with depth, since YAML indents every level.
pub const MAX_BUNDLE_DEPTH: usize = 100;
const ZSTD_LEVEL: i32 = 9;

/// Condition type (status `True`, phase `Failed`) an agent reports for a work it holds but will
/// not run because of its content: the bundle or its manifests crossed a limit or could not be
/// read. The condition's reason says which (the agent's `QuarantineReason`, e.g.
/// `BundleOverLimits`); only a delivery with different content lifts it.
pub const QUARANTINED_CONDITION: &str = "Quarantined";

/// Which decoding limit a bundle crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LimitExceeded {
    #[error("more than {max} manifests", max = crate::work::MAX_MANIFESTS)]
    Manifests,
    #[error("more than {MAX_BUNDLE_ELEMENTS} values")]
    Elements,
    #[error("values nested deeper than {MAX_BUNDLE_DEPTH} levels")]
    Depth,
}

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
    #[error("bundle has {0}")]
    Limit(LimitExceeded),
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

/// Whether `s` has the form [`content_hash`] produces (`sha256:` and 64 lowercase hex digits).
/// A receiver that cannot verify an announced hash (the content did not decompress) can still
/// refuse one that no content could have.
pub fn is_content_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Pack manifests for sending. Refuses what an agent would refuse to decode, so the hub says
/// so when the work is submitted instead of every agent quarantining it.
pub fn pack(manifests: &[Value]) -> Result<Packed, BundleError> {
    check_limits(manifests).map_err(BundleError::Limit)?;
    compress(&content(manifests)?)
}

/// Compress already-encoded bundle content (`pack` without the encoding; tests use it to build
/// bundles no honest hub would).
pub fn compress(raw: &[u8]) -> Result<Packed, BundleError> {
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    Ok(Packed {
        compressed,
        raw_len: raw.len(),
        hash: content_hash(raw),
    })
}

/// Decompress with a hard output bound, check the hash, decode within [`DecodeLimits`].
pub fn unpack(
    compressed: &[u8],
    expected_hash: &str,
    max: usize,
) -> Result<Vec<Value>, BundleError> {
    let raw = decompress(compressed, max)?;
    decode_checked(&raw, expected_hash)
}

/// The bundle content (CBOR) of `compressed`, at most `max` bytes of it.
pub fn decompress(compressed: &[u8], max: usize) -> Result<Vec<u8>, BundleError> {
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    read_bounded(decoder, max)
}

fn read_bounded(decoder: impl Read, max: usize) -> Result<Vec<u8>, BundleError> {
    let mut raw = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| BundleError::Compression(e.to_string()))?;
    if raw.len() > max {
        return Err(BundleError::TooLarge { max });
    }
    Ok(raw)
}

/// The content (CBOR) of `manifests` as [`pack`] encodes it: what [`content_hash`] covers, and
/// the base a patch refers to. Encoding is deterministic (map keys sorted), so manifests
/// decoded from a bundle encode back to the bytes they came from.
pub fn content(manifests: &[Value]) -> Result<Vec<u8>, BundleError> {
    crate::encode(&manifests).map_err(|e| BundleError::Encode(e.to_string()))
}

// ---------------------------------------------------------------- patches
//
// A changed work is mostly the content the agent already holds: a one-line change to a 5 MB
// install re-sent whole costs ~140 KB compressed per agent. A patch is the new content
// compressed with the held content as zstd's reference prefix (what `zstd --patch-from` does):
// every unchanged byte range becomes a back-reference, so it costs about what changed, at byte
// granularity rather than per manifest. The receiver rebuilds the content from its own copy
// and checks it against the announced hash, so a wrong base can never yield wrong manifests.

/// The window must reach back over the whole base, from the end of the content.
fn patch_window_log(base: usize, target: usize) -> u32 {
    let span = (base + target).max(1 << 10);
    (usize::BITS - (span - 1).leading_zeros()).clamp(10, PATCH_WINDOW_LOG_MAX)
}

/// Largest window a patch may use: base and content are each at most `MAX_BUNDLE_BYTES`.
const PATCH_WINDOW_LOG_MAX: u32 = 26;
const _: () = assert!(2 * MAX_BUNDLE_BYTES <= 1 << PATCH_WINDOW_LOG_MAX);

/// `target` (bundle content) as a patch against `base` (the content the receiver holds).
pub fn patch(base: &[u8], target: &[u8]) -> Result<Vec<u8>, BundleError> {
    let err = |e: std::io::Error| BundleError::Compression(e.to_string());
    let mut out = Vec::new();
    let mut encoder =
        zstd::stream::write::Encoder::with_ref_prefix(&mut out, ZSTD_LEVEL, base).map_err(err)?;
    encoder
        .window_log(patch_window_log(base.len(), target.len()))
        .map_err(err)?;
    // Long-distance matching finds the base's ranges however far back they are; without it
    // level 9 only searches a few hundred KB back and a large base gains little.
    encoder.long_distance_matching(true).map_err(err)?;
    encoder
        .set_pledged_src_size(Some(target.len() as u64))
        .map_err(err)?;
    std::io::Write::write_all(&mut encoder, target).map_err(err)?;
    encoder.finish().map_err(err)?;
    Ok(out)
}

/// Rebuild content from a [`patch`] and the `base` it was made against, within `max` bytes;
/// then as [`unpack`]: the hash checked, the manifests decoded within the limits.
pub fn unpatch(
    patch: &[u8],
    base: &[u8],
    expected_hash: &str,
    max: usize,
) -> Result<Vec<Value>, BundleError> {
    let err = |e: std::io::Error| BundleError::Compression(e.to_string());
    let mut decoder =
        zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(patch), base)
            .map_err(err)?;
    decoder.window_log_max(PATCH_WINDOW_LOG_MAX).map_err(err)?;
    let raw = read_bounded(decoder, max)?;
    decode_checked(&raw, expected_hash)
}

fn decode_checked(raw: &[u8], expected_hash: &str) -> Result<Vec<Value>, BundleError> {
    let actual = content_hash(raw);
    if actual != expected_hash {
        return Err(BundleError::HashMismatch {
            expected: expected_hash.to_string(),
            actual,
        });
    }
    let manifests: Manifests =
        crate::decode(raw).map_err(|e| BundleError::Decode(e.to_string()))?;
    manifests.0.map_err(BundleError::Limit)
}

/// Whether manifests held in memory are within the decoding limits (what [`pack`] checks).
pub fn check_limits(manifests: &[Value]) -> Result<(), LimitExceeded> {
    fn walk(v: &Value, depth: usize, count: &mut usize) -> Result<(), LimitExceeded> {
        if depth > MAX_BUNDLE_DEPTH {
            return Err(LimitExceeded::Depth);
        }
        *count += 1;
        if *count > MAX_BUNDLE_ELEMENTS {
            return Err(LimitExceeded::Elements);
        }
        match v {
            Value::Array(a) => a.iter().try_for_each(|c| walk(c, depth + 1, count)),
            Value::Object(m) => m.values().try_for_each(|c| walk(c, depth + 1, count)),
            _ => Ok(()),
        }
    }
    if manifests.len() > crate::work::MAX_MANIFESTS {
        return Err(LimitExceeded::Manifests);
    }
    let mut count = 0;
    manifests.iter().try_for_each(|m| walk(m, 1, &mut count))
}

/// A list of manifests decoded within the limits, usable as a field of any stored or received
/// record: `Err` says which limit the input crossed. Crossing one stops allocation at once;
/// the rest of the input is skipped without building anything, so a record holding a bomb can
/// still be read (and quarantined) cheaply.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifests(pub Result<Vec<Value>, LimitExceeded>);

impl Serialize for Manifests {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(m) => m.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(format!(
                "manifests over a limit ({e}) are never encoded"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Manifests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget {
            left: Cell::new(MAX_BUNDLE_ELEMENTS),
            exceeded: Cell::new(None),
        };
        let list = d.deserialize_seq(TopLevel { budget: &budget })?;
        Ok(Manifests(match budget.exceeded.get() {
            Some(e) => Err(e),
            None => Ok(list),
        }))
    }
}

struct Budget {
    left: Cell<usize>,
    exceeded: Cell<Option<LimitExceeded>>,
}

impl Budget {
    /// Take one value from the budget; `false` once any limit was crossed.
    fn take(&self, depth: usize) -> bool {
        if self.exceeded.get().is_some() {
            return false;
        }
        if depth > MAX_BUNDLE_DEPTH {
            self.exceeded.set(Some(LimitExceeded::Depth));
            return false;
        }
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                true
            }
            None => {
                self.exceeded.set(Some(LimitExceeded::Elements));
                false
            }
        }
    }
}

/// Never pre-allocate from a length the input announces.
const CAPACITY_HINT_CAP: usize = 1024;

struct TopLevel<'a> {
    budget: &'a Budget,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of manifests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let mut out = Vec::new();
        loop {
            if self.budget.exceeded.get().is_some() {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(Vec::new());
            }
            if out.len() == crate::work::MAX_MANIFESTS {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.budget.exceeded.set(Some(LimitExceeded::Manifests));
                    continue;
                }
                return Ok(out);
            }
            match seq.next_element_seed(Bounded {
                budget: self.budget,
                depth: 1,
            })? {
                Some(v) => out.push(v),
                None => return Ok(out),
            }
        }
    }
}

/// One value at `depth`, built only while the budget lasts (`Null` once it ran out).
struct Bounded<'a> {
    budget: &'a Budget,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if !self.budget.take(self.depth) {
            IgnoredAny::deserialize(d)?;
            return Ok(Value::Null);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        // As serde_json's own `Value` does: whatever fits in 64 bits, else an error.
        if let Ok(v) = i64::try_from(v) {
            Ok(Value::Number(v.into()))
        } else if let Ok(v) = u64::try_from(v) {
            Ok(Value::Number(v.into()))
        } else {
            Err(E::custom("integer out of range for a JSON number"))
        }
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(|v| Value::Number(v.into()))
            .map_err(|_| E::custom("integer out of range for a JSON number"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(CAPACITY_HINT_CAP));
        loop {
            if self.budget.exceeded.get().is_some() {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(Value::Null);
            }
            match seq.next_element_seed(Bounded {
                budget: self.budget,
                depth: self.depth + 1,
            })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        loop {
            if self.budget.exceeded.get().is_some() {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Value::Null);
            }
            let Some(key) = map.next_key::<String>()? else {
                return Ok(Value::Object(out));
            };
            let v = map.next_value_seed(Bounded {
                budget: self.budget,
                depth: self.depth + 1,
            })?;
            out.insert(key, v);
        }
    }
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

    /// A large install with one line changed: the patch carries the change, not the install.
    #[test]
    fn a_patch_costs_what_changed_and_rebuilds_the_exact_content() {
        let install = |image: &str| -> Vec<Value> {
            (0..400)
                .map(|i| {
                    json!({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("svc-{i}")}},
                        "spec": {"template": {"spec": {"containers": [{"name": "main",
                            "image": if i == 200 { image.to_string() } else { format!("registry.example/svc-{i}:1.{i}") },
                            "args": [format!("--id={i:08x}"), "no", "--level=info"]}]}}}})
                })
                .collect()
        };
        let v1 = install("registry.example/svc-200:1.0");
        let v2 = install("registry.example/svc-200:1.1");
        let (base, target) = (content(&v1).unwrap(), content(&v2).unwrap());
        let full = pack(&v2).unwrap();
        let p = patch(&base, &target).unwrap();
        assert!(
            p.len() * 20 < full.compressed.len(),
            "patch {} B vs full {} B",
            p.len(),
            full.compressed.len()
        );
        assert_eq!(
            unpatch(&p, &base, &full.hash, MAX_BUNDLE_BYTES).unwrap(),
            v2
        );
        // Decoded manifests encode back to the bytes they came from: the agent's base.
        assert_eq!(
            content(&unpack(&full.compressed, &full.hash, MAX_BUNDLE_BYTES).unwrap()).unwrap(),
            target
        );
        // Against another base the result is not the announced content: refused, never used.
        let other = content(&install("elsewhere:9")).unwrap();
        assert!(unpatch(&p, &other, &full.hash, MAX_BUNDLE_BYTES).is_err());
        assert!(matches!(
            unpatch(&p, &base, &full.hash, 1000),
            Err(BundleError::TooLarge { max: 1000 })
        ));
        assert!(matches!(
            unpatch(b"not zstd", &base, &full.hash, MAX_BUNDLE_BYTES),
            Err(BundleError::Compression(_))
        ));
    }

    #[test]
    fn a_patch_from_empty_or_unrelated_content_still_rebuilds_it() {
        let m = vec![json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})];
        let target = content(&m).unwrap();
        let hash = content_hash(&target);
        for base in [Vec::new(), b"unrelated".to_vec()] {
            let p = patch(&base, &target).unwrap();
            assert_eq!(unpatch(&p, &base, &hash, MAX_BUNDLE_BYTES).unwrap(), m);
        }
    }

    #[test]
    fn content_hashes_have_one_form() {
        let h = content_hash(b"x");
        assert!(is_content_hash(&h));
        for bad in [
            "",
            "sha256:",
            "sha256:00",
            &h.to_uppercase(),
            &format!("{h}\n"),
            &h[1..],
        ] {
            assert!(!is_content_hash(bad), "{bad:?}");
        }
    }

    #[test]
    fn same_content_same_hash() {
        let a = pack(&[json!({"b": 1, "a": 2})]).unwrap();
        let b = pack(&[json!({"a": 2, "b": 1})]).unwrap();
        assert_eq!(a.hash, b.hash);
    }

    /// CBOR header of major type `major` with argument `n` (always the 4-byte form, or 1 byte
    /// for small values), so tests can write inputs that would be too big to build as values.
    fn header(major: u8, n: u64) -> Vec<u8> {
        if n < 24 {
            vec![(major << 5) | n as u8]
        } else {
            let mut h = vec![(major << 5) | 26];
            h.extend_from_slice(&(n as u32).to_be_bytes());
            h
        }
    }

    fn text(s: &str) -> Vec<u8> {
        let mut out = header(3, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// `[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bomb"}, "data": X}]`
    fn one_manifest_around(x: &[u8]) -> Vec<u8> {
        let mut raw = header(4, 1);
        raw.extend(header(5, 4));
        for (k, v) in [("apiVersion", "v1"), ("kind", "ConfigMap")] {
            raw.extend(text(k));
            raw.extend(text(v));
        }
        raw.extend(text("metadata"));
        raw.extend(header(5, 1));
        raw.extend(text("name"));
        raw.extend(text("bomb"));
        raw.extend(text("data"));
        raw.extend_from_slice(x);
        raw
    }

    fn unpack_raw(raw: &[u8]) -> Result<Vec<Value>, BundleError> {
        let p = compress(raw).unwrap();
        unpack(&p.compressed, &p.hash, MAX_BUNDLE_BYTES)
    }

    #[test]
    fn many_small_values_are_refused_before_they_are_built() {
        // 32 MiB of empty lists: about a kilobyte compressed, once more than 2 GB decoded.
        let n = MAX_BUNDLE_BYTES as u64 - 100;
        let mut x = header(4, n);
        x.resize(x.len() + n as usize, 0x80);
        let raw = one_manifest_around(&x);
        assert!(raw.len() <= MAX_BUNDLE_BYTES);
        let p = compress(&raw).unwrap();
        assert!(p.compressed.len() < 8 * 1024, "{}", p.compressed.len());
        assert!(matches!(
            unpack(&p.compressed, &p.hash, MAX_BUNDLE_BYTES),
            Err(BundleError::Limit(LimitExceeded::Elements))
        ));
        // Exactly at the limit is fine: the manifest, its four values, the name and the list.
        let at_limit = MAX_BUNDLE_ELEMENTS as u64 - 6;
        let mut x = header(4, at_limit);
        x.resize(x.len() + at_limit as usize, 0x00);
        let ok = unpack_raw(&one_manifest_around(&x)).unwrap();
        assert_eq!(
            ok[0]["data"].as_array().map(Vec::len),
            Some(at_limit as usize)
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let nest = |levels: usize| {
            let mut x = Vec::new();
            for _ in 0..levels {
                x.extend(header(4, 1));
            }
            x.push(0x00);
            one_manifest_around(&x)
        };
        // The manifest is depth 1 and `data` depth 2: 98 lists and the integer make 100.
        assert!(unpack_raw(&nest(MAX_BUNDLE_DEPTH - 2)).is_ok());
        assert!(matches!(
            unpack_raw(&nest(MAX_BUNDLE_DEPTH - 1)),
            Err(BundleError::Limit(LimitExceeded::Depth))
        ));
    }

    #[test]
    fn too_many_manifests_are_refused() {
        let max = crate::work::MAX_MANIFESTS;
        let mut raw = header(4, max as u64 + 1);
        raw.extend(std::iter::repeat_n(0xa0, max + 1));
        assert!(matches!(
            unpack_raw(&raw),
            Err(BundleError::Limit(LimitExceeded::Manifests))
        ));
        let mut raw = header(4, max as u64);
        raw.extend(std::iter::repeat_n(0xa0, max));
        assert_eq!(unpack_raw(&raw).unwrap().len(), max);
    }

    #[test]
    fn bounded_decoding_builds_what_plain_decoding_builds() {
        let m = vec![
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"a": "b"}, "annotations": {}},
                "spec": {"replicas": 3, "ratio": 0.25, "neg": -7, "big": u64::MAX,
                    "list": [null, true, false, "ü", [], {}], "nested": {"x": [[1], [2, [3]]]}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ];
        let raw = crate::encode(&m).unwrap();
        let plain: Vec<Value> = crate::decode(&raw).unwrap();
        assert_eq!(plain, m);
        assert_eq!(unpack_raw(&raw).unwrap(), m);
        let bounded: Manifests = crate::decode(&raw).unwrap();
        assert_eq!(bounded.0.unwrap(), m);
        // And it encodes exactly like the plain list (stored records stay readable by both).
        assert_eq!(crate::encode(&Manifests(Ok(m.clone()))).unwrap(), raw);
    }

    #[test]
    fn pack_refuses_what_an_agent_would_refuse() {
        let mut deep = json!(0);
        for _ in 0..MAX_BUNDLE_DEPTH {
            deep = json!([deep]);
        }
        let m = vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": deep})];
        assert!(matches!(
            pack(&m),
            Err(BundleError::Limit(LimitExceeded::Depth))
        ));
        let many = vec![json!({}); crate::work::MAX_MANIFESTS + 1];
        assert!(matches!(
            pack(&many),
            Err(BundleError::Limit(LimitExceeded::Manifests))
        ));
    }
}
