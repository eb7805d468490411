//! Read models for the admin API: per-work summaries and per-cluster tables.

use crate::api::{ClusterWorkView, WorkDetail, WorkSummary};
use std::collections::BTreeMap;
use tether_protocol::{Labels, WorkPhase};
use tether_store::hub::{
    ClusterState, ClusterWorkRecord, WorkRecord, CLUSTERS, CLUSTER_WORKS, WORKS,
};
use tether_store::{ReadTx, StoreError};

struct Fleet {
    clusters: Vec<(String, Labels)>,
    /// work -> cluster -> row
    rows: BTreeMap<String, BTreeMap<String, ClusterWorkRecord>>,
}

fn fleet(tx: &ReadTx) -> Result<Fleet, StoreError> {
    let clusters = tx
        .list(&CLUSTERS)?
        .into_iter()
        .filter(|(_, c)| c.state != ClusterState::Denied)
        .map(|(n, c)| (n, c.labels))
        .collect();
    let mut rows: BTreeMap<String, BTreeMap<String, ClusterWorkRecord>> = BTreeMap::new();
    for (key, row) in tx.list(&CLUSTER_WORKS)? {
        if let Some((cluster, work)) = key.split_once('/') {
            rows.entry(work.to_string())
                .or_default()
                .insert(cluster.to_string(), row);
        }
    }
    Ok(Fleet { clusters, rows })
}

pub type DecisionMap = BTreeMap<String, std::sync::Arc<crate::decide::WorkDecision>>;

fn table(
    fleet: &Fleet,
    name: &str,
    record: &WorkRecord,
    decisions: &DecisionMap,
) -> Vec<ClusterWorkView> {
    let empty = BTreeMap::new();
    let rows = fleet.rows.get(name).unwrap_or(&empty);
    let mut out = Vec::new();
    for (cluster, labels) in &fleet.clusters {
        let targeted = record.deleted.is_none()
            && match decisions.get(name) {
                Some(d) => d.selected.contains_key(cluster),
                None => record.document.spec.targets.matches(cluster, labels),
            };
        let row = rows.get(cluster);
        if !targeted && row.is_none() {
            continue;
        }
        let status = row.and_then(|r| r.status.as_ref());
        let applied =
            status.filter(|s| matches!(s.phase, WorkPhase::Applied | WorkPhase::Available));
        out.push(ClusterWorkView {
            cluster: cluster.clone(),
            targeted,
            delivered_generation: row.and_then(|r| r.delivered.as_ref()).map(|d| d.generation),
            applied_generation: applied.map(|s| s.generation),
            phase: status.map(|s| s.phase),
            conditions: status.map(|s| s.conditions.clone()).unwrap_or_default(),
            resources: status.map(|s| s.resources.clone()).unwrap_or_default(),
            message: status.map(|s| s.message.clone()).unwrap_or_default(),
            observed_at_ms: status.map(|s| s.observed_at_ms),
        });
    }
    out
}

fn summarize(name: &str, record: &WorkRecord, table: &[ClusterWorkView]) -> WorkSummary {
    let current = |g: Option<u64>| g == Some(record.generation);
    let count = |f: &dyn Fn(&ClusterWorkView) -> bool| table.iter().filter(|c| f(c)).count();
    WorkSummary {
        name: name.to_string(),
        generation: record.generation,
        deleted: record.deleted.is_some(),
        targeted: count(&|c| c.targeted),
        delivered: count(&|c| c.targeted && current(c.delivered_generation)),
        applied: count(&|c| c.targeted && current(c.applied_generation)),
        available: count(&|c| {
            c.targeted && current(c.applied_generation) && c.phase == Some(WorkPhase::Available)
        }),
        failed: count(&|c| c.targeted && c.phase == Some(WorkPhase::Failed)),
        updated_at_ms: record.updated_at_ms,
    }
}

/// Every work still live, or deleted but not yet cleaned up everywhere.
/// `works` is the catalog's in-memory snapshot (the same records as the store): decoding every
/// stored document made the list cost grow with the size of all works.
pub fn summaries(
    tx: &ReadTx,
    works: &crate::works::WorkMap,
    decisions: &DecisionMap,
) -> Result<Vec<WorkSummary>, StoreError> {
    let fleet = fleet(tx)?;
    Ok(works
        .iter()
        .filter_map(|(name, entry)| {
            let record = &entry.record;
            let t = table(&fleet, name, record, decisions);
            (record.deleted.is_none() || !t.is_empty()).then(|| summarize(name, record, &t))
        })
        .collect())
}

pub fn detail(
    tx: &ReadTx,
    name: &str,
    decisions: &DecisionMap,
) -> Result<Option<WorkDetail>, StoreError> {
    let Some(record) = tx.get(&WORKS, name)? else {
        return Ok(None);
    };
    let fleet = fleet(tx)?;
    let clusters = table(&fleet, name, &record, decisions);
    if record.deleted.is_some() && clusters.is_empty() {
        return Ok(None);
    }
    Ok(Some(WorkDetail {
        summary: summarize(name, &record, &clusters),
        document: record.document,
        source_check: None,
        clusters,
    }))
}
