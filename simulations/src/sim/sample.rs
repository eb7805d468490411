//! What the hub reports during the run, four times a second, next to what the timeline did
//! (`World`); and the clusters' own view of each singleton, every 10 ms, because a singleton
//! active twice for less than a hub sample would otherwise go unseen.

use super::timeline::Applied;
use super::world::{SimAgent, World};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_agent::executor::memory::MemoryExecutor;
use tether_hub::AdminClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct WorkSample {
    pub generation: u64,
    pub targeted: usize,
    pub delivered: usize,
    pub applied: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub hub_up: bool,
    /// Agents the hub reports Ready.
    pub ready: usize,
    /// Agents alive with a working link and the hub up: the most that could be Ready.
    pub reachable: usize,
    /// Agents Ready and at the latest generation of every work that targets them.
    pub converged: usize,
    pub works: BTreeMap<String, WorkSample>,
    /// Progressive rollouts: (clusters updating now, admission peak reported by the hub).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, (usize, usize)>,
    #[serde(skip)]
    pub converged_agents: Vec<bool>,
}

/// Everything one sample needs; cloned into the sampling task.
#[derive(Clone)]
pub(super) struct Sampler {
    pub(super) admin: AdminClient,
    pub(super) names: Vec<String>,
    pub(super) world: Arc<Mutex<World>>,
    pub(super) t0: Instant,
    pub(super) rollout_works: Vec<String>,
}

impl Sampler {
    pub(super) async fn sample(&self) -> Sample {
        let t_s = self.t0.elapsed().as_secs_f64();
        let (hub_up, reachable) = {
            let w = self.world.lock().unwrap_or_else(|p| p.into_inner());
            let r = if w.hub_up {
                (0..w.alive.len())
                    .filter(|i| w.alive[*i] && !w.partitioned[*i])
                    .count()
            } else {
                0
            };
            (w.hub_up, r)
        };
        let mut s = Sample {
            t_s,
            hub_up,
            ready: 0,
            reachable,
            converged: 0,
            works: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            converged_agents: vec![false; self.names.len()],
        };
        if hub_up {
            self.ask_hub(&mut s).await;
        }
        s
    }

    /// The hub's side of a sample; on the first failed request the sample keeps what it has.
    async fn ask_hub(&self, s: &mut Sample) {
        for w in &self.rollout_works {
            if let Ok(r) = self.admin.rollout(w).await {
                s.rollouts
                    .insert(w.clone(), (r.in_flight, r.admission_peak));
            }
        }
        let Ok(clusters) = self.admin.clusters().await else {
            return;
        };
        let ready: BTreeMap<&str, bool> = clusters
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.state == tether_store::hub::ClusterState::Ready,
                )
            })
            .collect();
        s.ready = ready.values().filter(|r| **r).count();
        let mut ok: Vec<bool> = self
            .names
            .iter()
            .map(|n| ready.get(n.as_str()).copied().unwrap_or(false))
            .collect();
        let Ok(works) = self.admin.works().await else {
            return;
        };
        for w in works.iter().filter(|w| !w.deleted) {
            s.works.insert(
                w.name.clone(),
                WorkSample {
                    generation: w.generation,
                    targeted: w.targeted,
                    delivered: w.delivered,
                    applied: w.applied,
                },
            );
            let Ok(detail) = self.admin.work(&w.name).await else {
                return;
            };
            for (i, n) in self.names.iter().enumerate() {
                if let Some(c) = detail.clusters.iter().find(|c| &c.cluster == n) {
                    if c.targeted && c.applied_generation != Some(w.generation) {
                        ok[i] = false;
                    }
                }
            }
        }
        s.converged = ok.iter().filter(|b| **b).count();
        s.converged_agents = ok;
    }
}

/// The two background watchers of a run: the hub sampler and the singleton monitor.
pub(super) struct Watch {
    sampler: JoinHandle<()>,
    monitor: JoinHandle<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
    double_active: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    pub(super) fn start(sampler: &Sampler, agents: &[SimAgent], singletons: &[String]) -> Self {
        let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
        let double_active = Arc::new(Mutex::new(Vec::<String>::new()));
        let clusters: Vec<(String, MemoryExecutor)> = agents
            .iter()
            .map(|a| (a.name.clone(), a.cluster.clone()))
            .collect();
        Self {
            sampler: tokio::spawn(sample_every_250ms(sampler.clone(), samples.clone())),
            monitor: tokio::spawn(monitor_singletons(
                clusters,
                singletons.to_vec(),
                double_active.clone(),
                sampler.t0,
            )),
            samples,
            double_active,
        }
    }

    /// Stop both watchers; the samples taken and the singletons seen active twice.
    pub(super) async fn stop(self) -> (Vec<Sample>, Vec<String>) {
        self.sampler.abort();
        let _ = self.sampler.await;
        self.monitor.abort();
        let _ = self.monitor.await;
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let double_active = self
            .double_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (samples, double_active)
    }
}

async fn sample_every_250ms(sampler: Sampler, samples: Arc<Mutex<Vec<Sample>>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let s = sampler.sample().await;
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

/// How many simulated clusters hold each singleton's objects: the clusters themselves, not
/// the hub's view, which is what a double activation would harm.
async fn monitor_singletons(
    clusters: Vec<(String, MemoryExecutor)>,
    singletons: Vec<String>,
    double_active: Arc<Mutex<Vec<String>>>,
    t0: Instant,
) {
    loop {
        for w in &singletons {
            let prefix = format!("{w}-");
            let holders: Vec<&str> = clusters
                .iter()
                .filter(|(_, c)| c.objects().keys().any(|r| r.name.starts_with(&prefix)))
                .map(|(n, _)| n.as_str())
                .collect();
            if holders.len() > 1 {
                let mut d = double_active.lock().unwrap_or_else(|p| p.into_inner());
                if d.len() < 20 {
                    d.push(format!(
                        "{w} active on {} at {:.2}s",
                        holders.join(", "),
                        t0.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The end of the settle phase: whether and when the fleet converged, and the last sample.
pub(super) struct Settled {
    /// Seconds from the end of the timeline (`None` = not within the settle time).
    pub(super) converge_s: Option<f64>,
    pub(super) last: Option<Sample>,
}

/// Sample every 100 ms until every agent is Ready and at the latest generation of each work
/// targeting it, and the hub counts every work delivered and applied where targeted.
pub(super) async fn settle(
    sampler: &Sampler,
    applied: &BTreeMap<String, Applied>,
    agents: usize,
    settle: Duration,
    end_s: f64,
) -> Settled {
    let settle_start = Instant::now();
    let mut last = None;
    while settle_start.elapsed() < settle {
        let s = sampler.sample().await;
        let works_ok = applied.iter().all(|(w, a)| {
            s.works.get(w).is_some_and(|ws| {
                ws.generation == a.generation
                    && ws.applied == ws.targeted
                    && ws.delivered == ws.targeted
            })
        });
        if s.converged == agents && works_ok {
            return Settled {
                converge_s: Some(s.t_s - end_s),
                last: Some(s),
            };
        }
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Settled {
        converge_s: None,
        last,
    }
}
