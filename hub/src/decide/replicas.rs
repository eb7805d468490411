//! How a work's replicas are divided over its selected clusters.

use super::ClusterView;
use crate::api::Choice;
use crate::decide::placement;
use std::collections::BTreeMap;
use tether_protocol::work::{Divide, WorkSpec};
use tether_protocol::Labels;

/// Replicas per selected cluster, when the work divides a total; empty otherwise.
pub(super) fn shares(
    spec: &WorkSpec,
    choices: &[Choice],
    clusters: &BTreeMap<String, ClusterView>,
    labels_of: &dyn Fn(&str) -> Labels,
) -> BTreeMap<String, u32> {
    let Some(div) = spec.placement.as_ref().and_then(|p| p.replicas.as_ref()) else {
        return BTreeMap::new();
    };
    let picked = choices.iter().filter(|c| c.selected);
    let weights: BTreeMap<String, u32> = match div.divide {
        Divide::Capacity => {
            let claimed: Vec<(String, u32, bool)> = picked
                .map(|c| {
                    let view = clusters.get(&c.cluster);
                    (
                        c.cluster.clone(),
                        view.map_or(1, |v| v.cpus),
                        view.is_some_and(|v| v.cpus_pinned),
                    )
                })
                .collect();
            crate::fleet::facts::capacity_weights(&claimed)
                .into_iter()
                .collect()
        }
        Divide::Weighted => picked
            .map(|c| {
                let labels = labels_of(&c.cluster);
                let w = div
                    .weights
                    .iter()
                    .find(|w| w.selector.matches(&labels))
                    .map(|w| w.weight)
                    .unwrap_or(1);
                (c.cluster.clone(), w)
            })
            .collect(),
    };
    placement::divide_replicas(div.total, &weights)
}
