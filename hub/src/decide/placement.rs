//! Placement: which clusters a work goes to, and why each one was or was not chosen. Pure.

use crate::api::Choice;
use sha2::{Digest, Sha256};
use tether_protocol::work::{WorkSpec, FACT_LABEL_PREFIX};
use tether_protocol::{Facts, Labels};

/// A cluster as placement sees it: labels plus facts as `tether.dev/*` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub labels: Labels,
}

pub fn selectable_labels(labels: &Labels, facts: &Facts) -> Labels {
    let mut out = labels.clone();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            out.insert(format!("{FACT_LABEL_PREFIX}{k}"), v.to_string());
        }
    };
    put("arch", &facts.arch);
    put("os", &facts.os);
    if let Some(v) = &facts.kubernetes_version {
        put("kubernetes-version", v);
    }
    out
}

/// Rendezvous score: stable per (work, cluster), so `maxClusters` keeps its choice as long as
/// the candidates do not change.
fn score(work: &str, cluster: &str) -> [u8; 32] {
    Sha256::digest(format!("{work}/{cluster}").as_bytes()).into()
}

/// `sticky`: clusters chosen last time; with `maxClusters` they keep their place so a cluster
/// that comes back does not take its slot back from the replacement (no flapping).
/// `tainted`: clusters out of the running, with the reason (unreachable past the toleration).
pub fn select(
    work: &str,
    spec: &WorkSpec,
    candidates: &[Candidate],
    sticky: &std::collections::BTreeSet<String>,
    tainted: &std::collections::BTreeMap<String, String>,
) -> Vec<Choice> {
    let mut eligible = Vec::new();
    let mut out = Vec::new();
    for c in candidates {
        let (matched, why) = match &spec.placement {
            None => (
                spec.targets.matches(&c.name, &c.labels),
                if spec.targets.clusters.contains(&c.name) {
                    "named in spec.targets"
                } else {
                    "matches spec.targets.selector"
                },
            ),
            Some(p) => {
                if p.exclude.contains(&c.name) {
                    out.push(Choice {
                        cluster: c.name.clone(),
                        selected: false,
                        reason: "excluded by spec.placement.exclude".into(),
                    });
                    continue;
                }
                if p.clusters.contains(&c.name) {
                    (true, "named in spec.placement.clusters")
                } else if p.selector.as_ref().is_some_and(|s| s.matches(&c.labels)) {
                    (true, "matches spec.placement.selector")
                } else {
                    out.push(Choice {
                        cluster: c.name.clone(),
                        selected: false,
                        reason: match p
                            .selector
                            .as_ref()
                            .and_then(|s| s.first_mismatch(&c.labels))
                        {
                            Some(term) => format!("spec.placement.selector {term}"),
                            None => "not named in spec.placement.clusters (and no selector)".into(),
                        },
                    });
                    continue;
                }
            }
        };
        if matched {
            if let Some(taint) = tainted.get(&c.name) {
                out.push(Choice {
                    cluster: c.name.clone(),
                    selected: false,
                    reason: format!("matches, but {taint}"),
                });
                continue;
            }
            eligible.push((c, why));
        } else {
            let term = spec
                .targets
                .selector
                .as_ref()
                .and_then(|s| s.first_mismatch(&c.labels));
            out.push(Choice {
                cluster: c.name.clone(),
                selected: false,
                reason: match term {
                    Some(term) => format!("spec.targets.selector {term}"),
                    None => "not named in spec.targets.clusters (and no selector)".into(),
                },
            });
        }
    }
    let singleton = spec
        .failover
        .as_ref()
        .is_some_and(|f| f.mode == tether_protocol::work::FailoverMode::Singleton);
    let max = spec
        .placement
        .as_ref()
        .and_then(|p| p.max_clusters)
        .map(|m| m as usize)
        .unwrap_or(usize::MAX)
        .min(if singleton { 1 } else { usize::MAX });
    // The order only decides who is cut off by `max`. The key is a SHA-256 per cluster:
    // computed once per cluster, not once per comparison (at 10k clusters that was most of a
    // decision pass), and not at all when everyone eligible is selected.
    if max < eligible.len() {
        eligible.sort_by_cached_key(|(c, _)| (!sticky.contains(&c.name), score(work, &c.name)));
    }
    let spread_by = spec.placement.as_ref().and_then(|p| p.spread_by.as_deref());
    if let (Some(key), true) = (spread_by, max < eligible.len()) {
        eligible = spread(eligible, key);
    }
    for (i, (c, why)) in eligible.into_iter().enumerate() {
        let selected = i < max;
        out.push(Choice {
            cluster: c.name.clone(),
            selected,
            reason: if selected {
                why.to_string()
            } else {
                format!("eligible ({why}) but maxClusters={max} was reached")
            },
        });
    }
    out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    out
}

/// Reorder so that taking a prefix picks round-robin over the values of `key`, keeping each
/// domain's own order (stickiness, then score): domains differ by at most one.
fn spread<'a>(
    eligible: Vec<(&'a Candidate, &'static str)>,
    key: &str,
) -> Vec<(&'a Candidate, &'static str)> {
    let mut domains: std::collections::BTreeMap<String, std::collections::VecDeque<_>> =
        Default::default();
    for e in eligible {
        let d = e.0.labels.get(key).cloned().unwrap_or_default();
        domains.entry(d).or_default().push_back(e);
    }
    let mut out = Vec::new();
    while domains.values().any(|q| !q.is_empty()) {
        for q in domains.values_mut() {
            if let Some(e) = q.pop_front() {
                out.push(e);
            }
        }
    }
    out
}

/// Divide `total` replicas over `clusters` by weight (largest remainder; ties by name), so the
/// shares always add up to `total`. Pure.
pub fn divide_replicas(
    total: u32,
    weights: &std::collections::BTreeMap<String, u32>,
) -> std::collections::BTreeMap<String, u32> {
    let sum: u64 = weights.values().map(|w| u64::from(*w)).sum();
    let mut out: std::collections::BTreeMap<String, u32> = Default::default();
    if weights.is_empty() {
        return out;
    }
    if sum == 0 {
        return weights.keys().map(|k| (k.clone(), 0)).collect();
    }
    let mut rest: Vec<(u64, &String)> = Vec::new();
    let mut given = 0u64;
    for (c, w) in weights {
        let exact = u64::from(total) * u64::from(*w);
        let share = exact / sum;
        given += share;
        out.insert(c.clone(), share as u32);
        rest.push((exact % sum, c));
    }
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, c) in rest.into_iter().take((u64::from(total) - given) as usize) {
        if let Some(v) = out.get_mut(c) {
            *v += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> WorkSpec {
        serde_json::from_value(v).unwrap()
    }

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                name: format!("c{i:03}"),
                labels: [
                    (
                        "region".to_string(),
                        if i % 2 == 0 { "eu" } else { "us" }.to_string(),
                    ),
                    (
                        "tether.dev/arch".to_string(),
                        if i % 3 == 0 { "aarch64" } else { "x86_64" }.to_string(),
                    ),
                ]
                .into(),
            })
            .collect()
    }

    #[test]
    fn a_cluster_left_out_is_told_which_selector_term_failed() {
        let s = spec(json!({"placement": {"selector": {
            "matchLabels": {"region": "eu"},
            "matchExpressions": [
                {"key": "tether.dev/arch", "operator": "In", "values": ["aarch64"]},
                {"key": "tier", "operator": "Exists"},
            ]}}, "manifests": []}));
        let out = select("w", &s, &cands(4), &Default::default(), &Default::default());
        let why = |c: &str| out.iter().find(|x| x.cluster == c).unwrap().reason.clone();
        assert_eq!(
            why("c001"),
            "spec.placement.selector matchLabels region=eu: the cluster has region=us"
        );
        assert_eq!(
            why("c002"),
            "spec.placement.selector matchExpressions[0] tether.dev/arch In [aarch64]: the cluster has tether.dev/arch=x86_64"
        );
        assert_eq!(
            why("c000"),
            "spec.placement.selector matchExpressions[1] tier Exists []: the cluster has no tier label"
        );
        let sel = s.placement.as_ref().unwrap().selector.as_ref().unwrap();
        for c in cands(12) {
            assert_eq!(
                sel.first_mismatch(&c.labels).is_none(),
                sel.matches(&c.labels)
            );
        }
        let named = spec(json!({"targets": {"clusters": ["c000"]}, "manifests": []}));
        let out = select(
            "w",
            &named,
            &cands(2),
            &Default::default(),
            &Default::default(),
        );
        assert_eq!(
            out[1].reason,
            "not named in spec.targets.clusters (and no selector)"
        );
    }

    #[test]
    fn selects_by_labels_facts_names_and_exclusions() {
        let s = spec(json!({"placement": {
            "selector": {"matchLabels": {"region": "eu"}, "matchExpressions": [{"key": "tether.dev/arch", "operator": "In", "values": ["aarch64"]}]},
            "clusters": ["c001"], "exclude": ["c006"]}, "manifests": []}));
        let chosen: Vec<_> = select(
            "w",
            &s,
            &cands(12),
            &Default::default(),
            &Default::default(),
        )
        .into_iter()
        .filter(|c| c.selected)
        .map(|c| c.cluster)
        .collect();
        assert_eq!(chosen, vec!["c000", "c001"]);
    }

    #[test]
    fn spread_balances_domains() {
        let s = spec(
            json!({"placement": {"selector": {}, "maxClusters": 4, "spreadBy": "region"}, "manifests": []}),
        );
        let picked: Vec<_> = select(
            "w",
            &s,
            &cands(12),
            &Default::default(),
            &Default::default(),
        )
        .into_iter()
        .filter(|c| c.selected)
        .collect();
        let eu = picked
            .iter()
            .filter(|c| c.cluster[1..].parse::<usize>().unwrap() % 2 == 0)
            .count();
        assert_eq!((picked.len(), eu), (4, 2));
    }

    proptest! {
        #[test]
        fn replica_shares_add_up_and_follow_weights(total in 0u32..1000, ws in proptest::collection::vec(0u32..10, 1..12)) {
            let weights: std::collections::BTreeMap<String, u32> = ws.iter().enumerate().map(|(i, w)| (format!("c{i:02}"), *w)).collect();
            let shares = divide_replicas(total, &weights);
            let sum: u32 = shares.values().sum();
            if ws.iter().any(|w| *w > 0) {
                prop_assert_eq!(sum, total);
            }
            let wsum: u32 = ws.iter().sum();
            for (c, w) in &weights {
                if wsum > 0 {
                    let exact = f64::from(total) * f64::from(*w) / f64::from(wsum);
                    prop_assert!((f64::from(shares[c]) - exact).abs() < 1.0 + 1e-9);
                }
            }
        }
    }

    proptest! {
        /// maxClusters picks exactly min(max, eligible), and adding an unrelated ineligible
        /// cluster never changes the choice (no churn).
        #[test]
        fn max_clusters_is_stable(n in 1usize..40, max in 1u32..10, extra in 0usize..5) {
            let s = spec(json!({"placement": {"selector": {"matchLabels": {"region": "eu"}}, "maxClusters": max}, "manifests": []}));
            let base = cands(n);
            let picked = |cs: &[Candidate]| -> Vec<String> {
                select("w", &s, cs, &Default::default(), &Default::default()).into_iter().filter(|c| c.selected).map(|c| c.cluster).collect()
            };
            let a = picked(&base);
            let eligible = base.iter().filter(|c| c.labels["region"] == "eu").count();
            prop_assert_eq!(a.len(), eligible.min(max as usize));
            let mut more = base.clone();
            for i in 0..extra {
                more.push(Candidate { name: format!("x{i}"), labels: [("region".to_string(), "us".to_string())].into() });
            }
            prop_assert_eq!(picked(&more), a);
        }
    }
}
