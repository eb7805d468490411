//! What one change costs the decision core at fleet scale, for `tether-sim bench --only
//! controller`: a synthetic fleet (every cluster Ready, one region label of ten, every work
//! selecting one region and applied everywhere it is selected), and the CPU time of the
//! decision work for one status batch from one cluster and for one work apply, next to a full
//! pass over every work (what each pass did before the controller became incremental).

use crate::decide::{self, ClusterView, Inputs, WorkDecision};
use crate::works::WorkEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_protocol::{HeldWork, WorkPhase, WorkStatus};
use tether_store::hub::{ClusterWorkRecord, WorkRecord};

/// Median times of each kind of decision work, and how many works each decided.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControllerCost {
    pub clusters: usize,
    pub works: usize,
    /// Baseline: every work decided.
    pub full_pass: Duration,
    /// A status re-report from one cluster about each work it holds (steady state).
    pub status_batch: Duration,
    pub status_batch_decided: usize,
    /// A status batch that flips one cluster's work from Applied to Failed.
    pub status_flip: Duration,
    pub status_flip_decided: usize,
    /// A new generation of one work.
    pub work_apply: Duration,
    pub work_apply_decided: usize,
}

const REGIONS: usize = 10;
const ROUNDS: usize = 5;

fn entry(name: &str, region: usize, generation: u64) -> Result<Arc<WorkEntry>, String> {
    let document = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Work", "metadata": {"name": name},
        "spec": {
            "targets": {"selector": {"matchLabels": {"region": format!("r{region}")}}},
            "manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}}],
        },
    }))
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(WorkEntry::new(
        WorkRecord {
            document,
            generation,
            created_at_ms: 0,
            updated_at_ms: 0,
            deleted: None,
            scope: Default::default(),
        },
        None,
    )))
}

fn row(generation: u64, phase: WorkPhase, seq: u64) -> ClusterWorkRecord {
    ClusterWorkRecord {
        delivered: Some(HeldWork {
            generation,
            hash: String::new(),
            fenced: false,
        }),
        delivered_at_ms: Some(0),
        status: Some(WorkStatus {
            work: String::new(),
            generation,
            hash: String::new(),
            phase,
            conditions: vec![],
            resources: vec![],
            message: String::new(),
            observed_at_ms: 0,
        }),
        status_seq: seq,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Measure at `clusters` clusters and `works` works.
pub fn measure(clusters: usize, works: usize) -> Result<ControllerCost, String> {
    let views: BTreeMap<String, ClusterView> = (0..clusters)
        .map(|i| {
            let labels = [("region".to_string(), format!("r{}", i % REGIONS))].into();
            let view = ClusterView {
                labels,
                cpus: 4,
                cpus_pinned: false,
                denied: false,
                ready: true,
                away_ms: None,
                session_open: true,
            };
            (format!("c{i:06}"), view)
        })
        .collect();
    let mut catalog = BTreeMap::new();
    for j in 0..works {
        catalog.insert(
            format!("w{j:04}"),
            entry(&format!("w{j:04}"), j % REGIONS, 1)?,
        );
    }
    let mut status = BTreeMap::new();
    for (i, c) in views.keys().enumerate() {
        for j in (0..works).filter(|j| j % REGIONS == i % REGIONS) {
            status.insert(
                (format!("w{j:04}"), c.clone()),
                row(1, WorkPhase::Applied, 1),
            );
        }
    }
    let (rollouts, in_flight) = (BTreeMap::new(), BTreeSet::new());
    let decide = |catalog: &BTreeMap<String, Arc<WorkEntry>>,
                  status: &BTreeMap<(String, String), ClusterWorkRecord>,
                  previous: &BTreeMap<String, Arc<WorkDecision>>,
                  only: Option<&BTreeSet<String>>| {
        decide::decide(&Inputs {
            now_ms: 1,
            works: catalog,
            clusters: &views,
            status,
            rollouts: &rollouts,
            in_flight: &in_flight,
            previous,
            only,
        })
    };
    let previous = decide(&catalog, &status, &BTreeMap::new(), None).decisions;
    let timed = |f: &mut dyn FnMut() -> usize| {
        let mut times = Vec::new();
        let mut decided = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            decided = f();
            times.push(t.elapsed());
        }
        (median(times), decided)
    };
    let (full_pass, _) = timed(&mut || decide(&catalog, &status, &previous, None).decided);
    // One cluster's status batch: the rows it changes, filtered as the controller's view does.
    let cluster = views.keys().next().cloned().unwrap_or_default();
    let batch = |phase: WorkPhase| -> Vec<(String, ClusterWorkRecord)> {
        status
            .iter()
            .filter(|((_, c), _)| *c == cluster)
            .map(|((w, _), _)| (w.clone(), row(1, phase, 2)))
            .collect()
    };
    let apply_batch = |rows: &[(String, ClusterWorkRecord)]| {
        let touched: BTreeSet<String> = rows
            .iter()
            .filter(|(w, new)| {
                decide::row_change_matters(
                    catalog.get(w).map(|e| e.as_ref()),
                    previous.get(w).map(|d| d.as_ref()),
                    &cluster,
                    status.get(&(w.clone(), cluster.clone())),
                    Some(new),
                )
            })
            .map(|(w, _)| w.clone())
            .collect();
        decide(&catalog, &status, &previous, Some(&touched)).decided
    };
    let steady = batch(WorkPhase::Applied);
    let (status_batch, status_batch_decided) = timed(&mut || apply_batch(&steady));
    let flip = batch(WorkPhase::Failed);
    let (status_flip, status_flip_decided) = timed(&mut || apply_batch(&flip));
    let mut next = catalog.clone();
    next.insert("w0000".into(), entry("w0000", 0, 2)?);
    let none = BTreeSet::new();
    let (work_apply, work_apply_decided) =
        timed(&mut || decide(&next, &status, &previous, Some(&none)).decided);
    Ok(ControllerCost {
        clusters,
        works,
        full_pass,
        status_batch,
        status_batch_decided,
        status_flip,
        status_flip_decided,
        work_apply,
        work_apply_decided,
    })
}
