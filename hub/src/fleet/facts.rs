//! What the hub believes about a cluster's facts. Pure.
//!
//! Facts arrive from the agent (at join and in every heartbeat) and are therefore claims, not
//! truth. Three rules keep a lying agent from steering work meant for other clusters:
//! reported values are clamped to sane ranges, values a human vouched for (`FactPins`) win over
//! reports, and an unpinned capacity cannot outweigh the rest of the fleet.

use tether_protocol::Facts;
use tether_store::hub::FactPins;

/// Largest plausible values; anything above is a lie or a bug and is cut to these.
pub(crate) const MAX_CPUS: u32 = 4096;
pub(crate) const MAX_MEMORY_BYTES: u64 = 64 << 40;
pub(crate) const MAX_NODES: u32 = 100_000;
const MAX_TOKEN: usize = 64;
const MAX_HOSTNAME: usize = 253;
/// An unpinned cluster's capacity weight is at most this many times the fleet's median.
pub(crate) const UNPINNED_WEIGHT_CAP: u64 = 4;

/// A label-like token (`aarch64`, `linux`, `v1.31.2+k3s1`) or nothing: these become placement
/// labels, so they must be valid label values.
fn token(s: &str) -> String {
    let ok = s.len() <= MAX_TOKEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        s.to_string()
    } else {
        String::new()
    }
}

/// Reported facts cut to what the hub stores and shows.
pub(crate) fn clamp(f: &Facts) -> Facts {
    let hostname_ok = f.hostname.len() <= MAX_HOSTNAME
        && f.hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    Facts {
        arch: token(&f.arch),
        os: token(&f.os),
        cpus: f.cpus.clamp(1, MAX_CPUS),
        memory_bytes: f.memory_bytes.min(MAX_MEMORY_BYTES),
        agent_version: token(&f.agent_version),
        hostname: if hostname_ok {
            f.hostname.clone()
        } else {
            String::new()
        },
        kubernetes_version: f
            .kubernetes_version
            .as_deref()
            .map(token)
            .filter(|v| !v.is_empty()),
        node_count: f.node_count.map(|n| n.min(MAX_NODES)),
    }
}

/// The facts placement uses: pins over (clamped) reports.
pub(crate) fn effective(reported: &Facts, pins: &FactPins) -> Facts {
    let mut f = clamp(reported);
    if let Some(a) = &pins.arch {
        f.arch = a.clone();
    }
    if let Some(o) = &pins.os {
        f.os = o.clone();
    }
    if let Some(c) = pins.cpus {
        f.cpus = c.clamp(1, MAX_CPUS);
    }
    if let Some(v) = &pins.kubernetes_version {
        f.kubernetes_version = Some(v.clone());
    }
    f
}

/// The pins after an admin's request, or why the request is refused.
pub(crate) fn apply_pins(
    pins: &FactPins,
    reported: &Facts,
    req: &crate::api::PinFactsRequest,
) -> Result<FactPins, String> {
    let mut p = pins.clone();
    let reported = clamp(reported);
    if req.reported {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        p.arch = some(&reported.arch).or(p.arch);
        p.os = some(&reported.os).or(p.os);
        p.cpus = Some(reported.cpus);
        p.kubernetes_version = reported.kubernetes_version.clone().or(p.kubernetes_version);
    }
    let valid = |name: &str, v: &str| {
        if v.is_empty() || token(v) != v {
            Err(format!(
                "{name} {v:?} is not a fact value (1-{MAX_TOKEN} of A-Z a-z 0-9 . _ + -)"
            ))
        } else {
            Ok(v.to_string())
        }
    };
    if let Some(a) = &req.arch {
        p.arch = Some(valid("arch", a)?);
    }
    if let Some(o) = &req.os {
        p.os = Some(valid("os", o)?);
    }
    if let Some(v) = &req.kubernetes_version {
        p.kubernetes_version = Some(valid("kubernetes_version", v)?);
    }
    if let Some(c) = req.cpus {
        if !(1..=MAX_CPUS).contains(&c) {
            return Err(format!("cpus {c} is outside 1..={MAX_CPUS}"));
        }
        p.cpus = Some(c);
    }
    for f in &req.unpin {
        match f.as_str() {
            "arch" => p.arch = None,
            "os" => p.os = None,
            "cpus" => p.cpus = None,
            "kubernetes_version" | "kubernetes-version" => p.kubernetes_version = None,
            other => {
                return Err(format!(
                "cannot unpin {other:?}: the pinnable facts are arch, os, cpus, kubernetes_version"
            ))
            }
        }
    }
    Ok(p)
}

/// `arch=x86_64 cpus=8` (for the audit log and `tetherctl`).
pub fn describe_pins(p: &FactPins) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &p.arch {
        parts.push(format!("arch={a}"));
    }
    if let Some(o) = &p.os {
        parts.push(format!("os={o}"));
    }
    if let Some(c) = p.cpus {
        parts.push(format!("cpus={c}"));
    }
    if let Some(v) = &p.kubernetes_version {
        parts.push(format!("kubernetes_version={v}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// Pins taken at approval: the approver saw these in the join request.
pub(crate) fn pins_at_approval(join_facts: &Facts) -> FactPins {
    let f = clamp(join_facts);
    let some = |s: String| (!s.is_empty()).then_some(s);
    FactPins {
        arch: some(f.arch),
        os: some(f.os),
        cpus: None,
        kubernetes_version: None,
    }
}

/// Placement-relevant differences between two reports, for the audit log (`arch aarch64 ->
/// x86_64`). Memory and hostname churn are not placement inputs and are left out.
pub(crate) fn changes(old: &Facts, new: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a:?} -> {b:?}"));
        }
    };
    diff("arch", old.arch.clone(), new.arch.clone());
    diff("os", old.os.clone(), new.os.clone());
    diff("cpus", old.cpus.to_string(), new.cpus.to_string());
    diff(
        "kubernetes_version",
        old.kubernetes_version.clone().unwrap_or_default(),
        new.kubernetes_version.clone().unwrap_or_default(),
    );
    out
}

/// Capacity weights for replica division. `weights` holds each selected cluster's effective cpus
/// and whether they are pinned. Unpinned weights are capped at `UNPINNED_WEIGHT_CAP` times the
/// lower median of all weights, so one agent claiming 4096 cpus cannot take every replica.
pub(crate) fn capacity_weights(weights: &[(String, u32, bool)]) -> Vec<(String, u32)> {
    let mut sorted: Vec<u64> = weights.iter().map(|(_, w, _)| u64::from(*w)).collect();
    sorted.sort_unstable();
    let median = sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1)
        .max(1);
    weights
        .iter()
        .map(|(n, w, pinned)| {
            let w = (*w).max(1);
            let cap = u32::try_from(median * UNPINNED_WEIGHT_CAP).unwrap_or(u32::MAX);
            (n.clone(), if *pinned { w } else { w.min(cap) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: &str, cpus: u32) -> Facts {
        Facts {
            arch: arch.into(),
            os: "linux".into(),
            cpus,
            memory_bytes: 1 << 30,
            agent_version: "0.1.0".into(),
            hostname: "edge-1".into(),
            kubernetes_version: Some("v1.31.2+k3s1".into()),
            node_count: Some(1),
        }
    }

    #[test]
    fn clamp_cuts_absurd_numbers_and_drops_non_tokens() {
        let mut f = facts("x86_64", u32::MAX);
        f.memory_bytes = u64::MAX;
        f.node_count = Some(u32::MAX);
        f.os = "linux\ntether.dev/evil=1".into();
        f.kubernetes_version = Some("x".repeat(65));
        f.hostname = "a b".into();
        let c = clamp(&f);
        assert_eq!(c.cpus, MAX_CPUS);
        assert_eq!(c.memory_bytes, MAX_MEMORY_BYTES);
        assert_eq!(c.node_count, Some(MAX_NODES));
        assert_eq!(c.os, "");
        assert_eq!(c.kubernetes_version, None);
        assert_eq!(c.hostname, "");
        assert_eq!(c.arch, "x86_64");
        assert_eq!(clamp(&facts("arm64", 0)).cpus, 1);
        // Honest values pass unchanged.
        assert_eq!(clamp(&facts("aarch64", 4)), facts("aarch64", 4));
    }

    #[test]
    fn pins_win_over_reports() {
        let pins = pins_at_approval(&facts("x86_64", 4));
        assert_eq!(pins.arch.as_deref(), Some("x86_64"));
        assert_eq!(pins.cpus, None);
        let e = effective(&facts("aarch64", 64), &pins);
        assert_eq!(e.arch, "x86_64");
        assert_eq!(e.cpus, 64, "unpinned cpus follow the report");
        let pinned = FactPins {
            cpus: Some(8),
            kubernetes_version: Some("v1.30.0".into()),
            ..pins
        };
        let e = effective(&facts("aarch64", 64), &pinned);
        assert_eq!(e.cpus, 8);
        assert_eq!(e.kubernetes_version.as_deref(), Some("v1.30.0"));
    }

    #[test]
    fn admin_pins_validate_and_unpin() {
        use crate::api::PinFactsRequest;
        let pins = pins_at_approval(&facts("x86_64", 4));
        let req = PinFactsRequest {
            cpus: Some(16),
            unpin: vec!["os".into()],
            ..Default::default()
        };
        let p = apply_pins(&pins, &facts("aarch64", 4), &req).unwrap();
        assert_eq!(p.arch.as_deref(), Some("x86_64"));
        assert_eq!((p.os, p.cpus), (None, Some(16)));
        let all = PinFactsRequest {
            reported: true,
            ..Default::default()
        };
        let p = apply_pins(&FactPins::default(), &facts("aarch64", 4), &all).unwrap();
        assert_eq!(
            describe_pins(&p),
            "arch=aarch64 os=linux cpus=4 kubernetes_version=v1.31.2+k3s1"
        );
        for bad in [
            PinFactsRequest {
                arch: Some("x 86".into()),
                ..Default::default()
            },
            PinFactsRequest {
                cpus: Some(0),
                ..Default::default()
            },
            PinFactsRequest {
                unpin: vec!["hostname".into()],
                ..Default::default()
            },
        ] {
            assert!(
                apply_pins(&pins, &facts("x86_64", 4), &bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_join_facts_pin_nothing() {
        let pins = pins_at_approval(&Facts::default());
        assert_eq!(pins, FactPins::default());
    }

    #[test]
    fn changes_name_placement_inputs_only() {
        let a = facts("x86_64", 4);
        let mut b = facts("aarch64", 4);
        b.memory_bytes = 2 << 30;
        b.hostname = "other".into();
        assert_eq!(changes(&a, &b), vec![r#"arch "x86_64" -> "aarch64""#]);
        assert!(changes(&a, &a).is_empty());
    }

    #[test]
    fn an_unpinned_giant_is_capped_near_the_median() {
        let w = capacity_weights(&[
            ("honest-a".into(), 4, false),
            ("honest-b".into(), 4, false),
            ("liar".into(), MAX_CPUS, false),
        ]);
        assert_eq!(w[2], ("liar".to_string(), 16));
        assert_eq!(w[0].1, 4);
        // A pinned big cluster keeps its weight: an admin vouched for it.
        let w = capacity_weights(&[
            ("a".into(), 4, false),
            ("b".into(), 4, false),
            ("big".into(), 256, true),
        ]);
        assert_eq!(w[2].1, 256);
    }

    #[test]
    fn capacity_cap_bounds_any_unpinned_share() {
        // Property: for any fleet, an unpinned cluster's weight never exceeds 4x the median.
        for seed in 0u32..500 {
            let n = 1 + (seed % 9) as usize;
            let ws: Vec<(String, u32, bool)> = (0..n)
                .map(|i| {
                    let x = seed.wrapping_mul(2654435761).rotate_left(i as u32 * 7);
                    (format!("c{i}"), 1 + x % MAX_CPUS, false)
                })
                .collect();
            let mut sorted: Vec<u64> = ws.iter().map(|w| u64::from(w.1)).collect();
            sorted.sort_unstable();
            let median = sorted[(n - 1) / 2];
            for (_, w) in capacity_weights(&ws) {
                assert!(
                    w >= 1 && u64::from(w) <= median * UNPINNED_WEIGHT_CAP,
                    "seed {seed}"
                );
            }
        }
    }
}
