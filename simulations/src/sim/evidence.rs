//! What the invariants are judged on, read once the run has settled: from the hub's admin API,
//! from the simulated clusters and from the agents' stores. Kept apart from the judging so that
//! each invariant can be checked on hand-made evidence.

use super::timeline::Applied;
use super::world::SimAgent;
use crate::scenario::Scenario;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tether_hub::AdminClient;
use tether_protocol::Labels;

/// One simulated cluster's objects.
pub(super) struct Holdings {
    pub(super) name: String,
    pub(super) labels: Labels,
    /// (object name, object).
    pub(super) objects: Vec<(String, serde_json::Value)>,
}

pub(super) struct Content {
    /// For works with a policy (placement can move them): the clusters the hub finally
    /// targeted. Other works belong wherever their target labels match.
    pub(super) placed: BTreeMap<String, BTreeSet<String>>,
    pub(super) clusters: Vec<Holdings>,
}

pub(super) async fn cluster_content(
    admin: &AdminClient,
    agents: &[SimAgent],
    applied: &BTreeMap<String, Applied>,
    scenario: &Scenario,
) -> Content {
    let mut placed = BTreeMap::new();
    for w in applied
        .keys()
        .filter(|w| scenario.policies.contains_key(*w))
    {
        if let Ok(d) = admin.work(w).await {
            placed.insert(
                w.clone(),
                d.clusters
                    .iter()
                    .filter(|c| c.targeted)
                    .map(|c| c.cluster.clone())
                    .collect(),
            );
        }
    }
    let clusters = agents
        .iter()
        .map(|a| Holdings {
            name: a.name.clone(),
            labels: a.labels.clone(),
            objects: a
                .cluster
                .objects()
                .into_iter()
                .map(|(r, v)| (r.name, v))
                .collect(),
        })
        .collect();
    Content { placed, clusters }
}

/// The newest status the agent knows the hub acknowledged, the next seq it would assign, and
/// how many entries are still queued.
pub(super) struct Outbox {
    pub(super) acked: u64,
    pub(super) next: u64,
    pub(super) depth: u64,
}

pub(super) enum StatusHistory {
    /// The hub could not list the cluster's status log.
    Unreadable { cluster: String, error: String },
    Read {
        cluster: String,
        /// The seqs of the hub's status log for this cluster, in the order the hub lists them.
        seqs: Vec<u64>,
        outbox: Result<Outbox, String>,
    },
}

/// Read only after the agents stopped: in one process redb refuses a second open of a store.
pub(super) async fn status_histories(
    admin: &AdminClient,
    agents: &[SimAgent],
) -> Vec<StatusHistory> {
    let mut out = Vec::with_capacity(agents.len());
    for a in agents {
        out.push(match admin.status_log(&a.name).await {
            Ok(log) => StatusHistory::Read {
                cluster: a.name.clone(),
                seqs: log.iter().map(|e| e.seq).collect(),
                outbox: read_outbox(&a.data_dir).map_err(|e| format!("{e:#}")),
            },
            Err(e) => StatusHistory::Unreadable {
                cluster: a.name.clone(),
                error: format!("{e:#}"),
            },
        });
    }
    out
}

/// Status entries the hub stored, over the clusters whose log it could list.
pub(super) fn status_entries(histories: &[StatusHistory]) -> usize {
    histories
        .iter()
        .map(|h| match h {
            StatusHistory::Read { seqs, .. } => seqs.len(),
            StatusHistory::Unreadable { .. } => 0,
        })
        .sum()
}

/// Statuses still queued in a converged fleet are durable and will be sent, so not a loss:
/// worth a note, not a failure.
pub(super) fn still_queued(histories: &[StatusHistory], converged: bool) -> Vec<String> {
    histories
        .iter()
        .filter_map(|h| match h {
            StatusHistory::Read {
                cluster,
                outbox: Ok(o),
                ..
            } if o.depth > 0 && converged => Some(format!(
                "{cluster}: {} status entries still queued",
                o.depth
            )),
            _ => None,
        })
        .collect()
}

/// A delivery the hub recorded, next to what the agent's store holds of that work.
pub(super) struct Delivery {
    pub(super) cluster: String,
    pub(super) generation: u64,
    /// The generation in the agent's store (`None`: not there), or why it was unreadable.
    pub(super) held: Result<Option<u64>, String>,
}

pub(super) struct WorkDeliveries {
    pub(super) work: String,
    /// `None`: the hub does not know the work.
    pub(super) deliveries: Option<Vec<Delivery>>,
}

/// Read only after the agents stopped, as `status_histories`.
pub(super) async fn deliveries(
    admin: &AdminClient,
    agents: &[SimAgent],
    applied: &BTreeMap<String, Applied>,
) -> Vec<WorkDeliveries> {
    let mut out = Vec::with_capacity(applied.len());
    for w in applied.keys() {
        let deliveries = admin.work(w).await.ok().map(|detail| {
            detail
                .clusters
                .iter()
                .filter_map(|c| {
                    let generation = c.delivered_generation?;
                    let a = agents.iter().find(|a| a.name == c.cluster)?;
                    Some(Delivery {
                        cluster: a.name.clone(),
                        generation,
                        held: read_desired(&a.data_dir, w).map_err(|e| format!("{e:#}")),
                    })
                })
                .collect()
        });
        out.push(WorkDeliveries {
            work: w.clone(),
            deliveries,
        });
    }
    out
}

fn read_outbox(dir: &Path) -> anyhow::Result<Outbox> {
    let store = tether_store::Store::open(dir.join("agent.redb"))?;
    let (meta, depth) = store.read(|tx| {
        Ok::<_, tether_store::StoreError>((
            tx.get(
                &tether_store::agent::OUTBOX_META,
                tether_store::agent::CURRENT,
            )?
            .unwrap_or_default(),
            tx.seq_len(&tether_store::agent::OUTBOX)?,
        ))
    })?;
    Ok(Outbox {
        acked: meta.acked_through,
        next: meta.next_seq,
        depth,
    })
}

fn read_desired(dir: &Path, work: &str) -> anyhow::Result<Option<u64>> {
    let store = tether_store::Store::open(dir.join("agent.redb"))?;
    Ok(store
        .read(|tx| tx.get(&tether_store::agent::DESIRED, work))?
        .map(|d| d.generation))
}
