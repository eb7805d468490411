//! Hostile bundles, written as raw CBOR (building them as values would cost the test what they
//! cost the agent).

#![allow(dead_code)]

pub fn header(major: u8, n: u64) -> Vec<u8> {
    if n < 24 {
        vec![(major << 5) | n as u8]
    } else {
        let mut h = vec![(major << 5) | 26];
        h.extend_from_slice(&(n as u32).to_be_bytes());
        h
    }
}

pub fn text(s: &str) -> Vec<u8> {
    let mut out = header(3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// `[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME, "namespace":
/// "default"}, "data": DATA}]` with `data` given as raw CBOR.
pub fn config_map_around(name: &str, data: &[u8]) -> Vec<u8> {
    let mut raw = header(4, 1);
    raw.extend(header(5, 4));
    for (k, v) in [("apiVersion", "v1"), ("kind", "ConfigMap")] {
        raw.extend(text(k));
        raw.extend(text(v));
    }
    raw.extend(text("metadata"));
    raw.extend(header(5, 2));
    raw.extend(text("name"));
    raw.extend(text(name));
    raw.extend(text("namespace"));
    raw.extend(text("default"));
    raw.extend(text("data"));
    raw.extend_from_slice(data);
    raw
}

/// A list of `n` empty lists: one byte each in CBOR, a 32-byte value each once decoded.
pub fn empty_lists(n: u64) -> Vec<u8> {
    let mut x = header(4, n);
    x.resize(x.len() + n as usize, 0x80);
    x
}

/// `levels` nested one-element lists around a list of `n` zeros: small in CBOR and in values,
/// but every zero renders as a YAML line indented by two spaces per level.
pub fn deep_zeros(levels: usize, n: u64) -> Vec<u8> {
    let mut x = Vec::new();
    for _ in 0..levels {
        x.extend(header(4, 1));
    }
    x.extend(header(4, n));
    x.resize(x.len() + n as usize, 0x00);
    x
}
