//! Which clusters a work's failover treats as gone, and why.

use super::ClusterView;
use std::collections::BTreeMap;
use std::time::Duration;
use tether_protocol::work::{FailoverMode, FailoverSpec};

/// Clusters unreachable past the work's tolerance: `tolerationSeconds` for multi-cluster
/// failover; for a singleton, until its copy has surely fenced itself (`fenceAfterSeconds +
/// clockSkewSeconds`). Without failover nothing is tainted.
pub(super) fn tainted(
    failover: Option<&FailoverSpec>,
    clusters: &BTreeMap<String, ClusterView>,
) -> BTreeMap<String, String> {
    let Some(f) = failover else {
        return BTreeMap::new();
    };
    let (limit_s, what) = match f.mode {
        FailoverMode::Singleton => (
            f.fence_after_seconds + f.clock_skew_seconds,
            "fenceAfterSeconds + clockSkewSeconds",
        ),
        FailoverMode::Multi => (f.toleration_seconds, "tolerationSeconds"),
    };
    let may_move = |ms: u64| match f.mode {
        FailoverMode::Singleton => tether_protocol::fencing::may_move(
            Duration::from_millis(ms),
            Duration::from_secs(f.fence_after_seconds),
            Duration::from_secs(f.clock_skew_seconds),
        ),
        FailoverMode::Multi => ms > limit_s * 1000,
    };
    clusters
        .iter()
        .filter_map(|(c, v)| v.away_ms.map(|ms| (c, ms)))
        .filter(|(_, ms)| may_move(*ms))
        .map(|(c, ms)| {
            (
                c.clone(),
                format!(
                    "tainted unreachable for {}s (> {what} = {limit_s}s)",
                    ms / 1000
                ),
            )
        })
        .collect()
}
