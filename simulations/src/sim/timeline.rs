//! Playing the scripted timeline against the fleet: faults, heals and applies, each recorded
//! as it actually happened (the time it ran, and a note when it did not go as planned).

use super::report::EventRecord;
use super::world::{Join, SimAgent, Started, World};
use crate::fleet::LocalHub;
use crate::scenario::{ActionKind, Plan, Scenario};
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_hub::AdminClient;
use tether_protocol::work::WorkDocument;
use tether_protocol::Labels;
use tokio::time::Instant;

/// The applies of one work so far; generation n's objects hold `"<work>-v<n>"`.
#[derive(Debug, Clone)]
pub(super) struct Applied {
    /// The hub's generation after the last apply.
    pub(super) generation: u64,
    /// Applies made, which names the value the clusters must end up holding.
    pub(super) applies: usize,
    pub(super) target: Labels,
}

pub(super) struct Run {
    pub(super) plan: Plan,
    pub(super) scenario: Scenario,
    pub(super) hub: LocalHub,
    pub(super) agents: Vec<SimAgent>,
    join: Join,
    pub(super) world: Arc<Mutex<World>>,
    pub(super) admin: AdminClient,
    pub(super) applied: BTreeMap<String, Applied>,
    /// Status gaps and duplicates the hub counted, summed over its lifetimes (a restart
    /// starts its counters at zero).
    pub(super) gaps: u64,
    pub(super) duplicates: u64,
    pub(super) hub_restarts: usize,
    pub(super) t0: Instant,
    pub(super) events: Vec<EventRecord>,
    verbose: bool,
}

pub fn work_document(
    name: &str,
    objects: usize,
    value: &str,
    labels: &Labels,
    policy: Option<&serde_json::Value>,
) -> anyhow::Result<WorkDocument> {
    let manifests: Vec<serde_json::Value> = (0..objects)
        .map(|k| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-{k}"), "namespace": "default"},
                "data": {"value": value},
            })
        })
        .collect();
    let mut spec = serde_json::json!({
        "targets": {"selector": {"matchLabels": labels}},
        "manifests": manifests,
    });
    if let (Some(extra), Some(obj)) = (policy.and_then(|p| p.as_object()), spec.as_object_mut()) {
        if extra.contains_key("placement") {
            obj.remove("targets");
        }
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": tether_protocol::work::WORK_API_VERSION,
        "kind": tether_protocol::work::WORK_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

impl Run {
    /// The timeline's clock starts now.
    pub(super) fn new(plan: Plan, scenario: Scenario, fleet: Started, verbose: bool) -> Self {
        Self {
            plan,
            scenario,
            hub: fleet.hub,
            agents: fleet.agents,
            join: fleet.join,
            world: fleet.world,
            admin: fleet.admin,
            applied: BTreeMap::new(),
            gaps: 0,
            duplicates: 0,
            hub_restarts: 0,
            t0: Instant::now(),
            events: Vec::new(),
            verbose,
        }
    }

    pub(super) fn log(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!(
                "[{:7.2}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }

    pub(super) fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every action at its planned time; returns the time the timeline ended.
    pub(super) async fn play(&mut self) -> anyhow::Result<f64> {
        let actions = self.plan.actions.clone();
        for a in &actions {
            tokio::time::sleep_until(self.t0 + Duration::from_secs_f64(a.at_s)).await;
            let t_s = self.now_s();
            let label = action_label(&a.kind);
            let count = action_agents(&a.kind, self.plan.agents);
            let note = self.execute(&a.kind).await?;
            self.log(format!("{label} ({count} agents) {note}"));
            self.events.push(EventRecord {
                planned_s: a.at_s,
                t_s,
                action: label,
                agents: count,
                heal: a.heal,
                note,
            });
        }
        tokio::time::sleep_until(self.t0 + self.plan.duration()).await;
        Ok(self.now_s())
    }

    /// Links of agent `i` drop everything while it is partitioned or dead.
    fn sync_link(&self, i: usize) {
        let (alive, part) = {
            let w = self.world();
            (w.alive[i], w.partitioned[i])
        };
        self.agents[i].set_partitioned(part || !alive);
    }

    pub(super) fn read_hub_counters(&mut self) {
        if let Some(h) = &self.hub.hub {
            self.gaps += h.state.metrics.status_gaps.get();
            self.duplicates += h.state.metrics.status_duplicates.get();
        }
    }

    /// Stop the hub as abruptly as this process allows: its close frames never reach anyone.
    async fn hub_down(&mut self) {
        for a in &self.agents {
            a.set_partitioned(true);
        }
        self.read_hub_counters();
        self.hub.stop().await;
        self.world().hub_up = false;
        for i in 0..self.agents.len() {
            self.sync_link(i);
        }
    }

    async fn hub_up(&mut self) -> anyhow::Result<()> {
        self.hub.restart().await.context("restarting the hub")?;
        self.hub_restarts += 1;
        self.world().hub_up = true;
        Ok(())
    }

    async fn apply(&mut self, work: &str, objects: usize, target: &Labels) -> String {
        if !self.world().hub_up {
            // Nobody can apply to a hub that is down; the timeline moves on.
            return "skipped: the hub is down".into();
        }
        let n = self.applied.get(work).map_or(0, |a| a.applies) + 1;
        let value = format!("{work}-v{n}");
        let doc = match work_document(
            work,
            objects,
            &value,
            target,
            self.scenario.policies.get(work),
        ) {
            Ok(d) => d,
            Err(e) => return format!("could not build work: {e}"),
        };
        let start = Instant::now();
        loop {
            match self.admin.apply_work(&doc).await {
                Ok(r) => {
                    let applied = Applied {
                        generation: r.generation,
                        applies: n,
                        target: target.clone(),
                    };
                    self.applied.insert(work.to_string(), applied);
                    return format!("generation {} ({:?})", r.generation, r.outcome);
                }
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    return format!("apply failed for 10s: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Wait until the hub recorded the latest generation of `work` delivered to all of `agents`.
    async fn wait_delivered(&self, work: &str, agents: &[usize]) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(d) = self.admin.work(work).await {
                let g = d.summary.generation;
                if agents.iter().all(|i| {
                    d.clusters.iter().any(|c| {
                        c.cluster == self.agents[*i].name && c.delivered_generation == Some(g)
                    })
                }) {
                    return format!(
                        "killed {:.0} ms after delivery of {work} generation {g} was recorded",
                        start.elapsed().as_millis()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        format!("{work} not delivered within 30s; killed anyway")
    }

    /// Carry out one action; the note it returns goes into the event record.
    async fn execute(&mut self, kind: &ActionKind) -> anyhow::Result<String> {
        Ok(match kind {
            ActionKind::Partition { agents, on } => {
                for &i in agents {
                    self.world().partitioned[i] = *on;
                    self.sync_link(i);
                }
                String::new()
            }
            ActionKind::SetProfile { agents, profile } => {
                self.set_profile(agents, profile.as_deref());
                String::new()
            }
            ActionKind::HubStop => {
                self.hub_down().await;
                String::new()
            }
            ActionKind::HubStart => {
                if !self.world().hub_up {
                    self.hub_up().await?;
                }
                String::new()
            }
            ActionKind::HubMove => self.hub_move().await?,
            ActionKind::AgentKill {
                agents,
                after_delivery,
            } => self.agent_kill(agents, after_delivery.as_deref()).await,
            ActionKind::AgentStart { agents } => {
                for &i in agents {
                    self.agent_start(i).await;
                }
                String::new()
            }
            ActionKind::Apply {
                work,
                objects,
                target_labels,
            } => self.apply(work, *objects, target_labels).await,
        })
    }

    /// `None` restores each agent's own profile.
    fn set_profile(&self, agents: &[usize], profile: Option<&str>) {
        for &i in agents {
            let p = match profile {
                Some(p) => self.scenario.profiles.get(p).cloned().unwrap_or_default(),
                None => self.agents[i].profile.clone(),
            };
            for r in &self.agents[i].relays {
                r.set_profile(p.clone());
            }
        }
    }

    /// The hub comes back on a new port; only the agents' second hub address follows it, so
    /// that the first one leads nowhere and the agents must fail over.
    async fn hub_move(&mut self) -> anyhow::Result<String> {
        let old = self.hub.quic_addr();
        if self.world().hub_up {
            self.hub_down().await;
        }
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        self.hub.cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        self.hub_up().await?;
        let new = self.hub.quic_addr();
        for a in &self.agents {
            if let Some(r) = a.relays.get(1) {
                r.set_target(new);
            }
        }
        Ok(format!(
            "hub moved from {old} to {new}; address 1 now leads nowhere"
        ))
    }

    async fn agent_kill(&mut self, agents: &[usize], after_delivery: Option<&str>) -> String {
        let note = match after_delivery {
            Some(w) => self.wait_delivered(w, agents).await,
            None => String::new(),
        };
        for &i in agents {
            self.agents[i].set_partitioned(true);
            self.world().alive[i] = false;
            self.agents[i].kill().await;
        }
        note
    }

    async fn agent_start(&mut self, i: usize) {
        if !self.agents[i].alive() {
            self.agents[i].wait_store_released().await;
            self.agents[i].spawn(&self.join);
        }
        self.world().alive[i] = true;
        self.sync_link(i);
    }

    /// Heal everything still broken at the end of the timeline.
    pub(super) async fn heal_all(&mut self) -> anyhow::Result<()> {
        if !self.world().hub_up {
            self.hub_up().await?;
        }
        for i in 0..self.agents.len() {
            self.world().partitioned[i] = false;
            self.agent_start(i).await;
        }
        Ok(())
    }

    /// Stop the agents gracefully so that their stores can be read; what went wrong, per agent.
    pub(super) async fn stop_agents(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for a in self.agents.iter_mut() {
            if let Some(e) = a.stop().await {
                errors.push(format!("{}: {e}", a.name));
            }
        }
        errors
    }
}

fn action_label(k: &ActionKind) -> String {
    match k {
        ActionKind::Partition { on: true, .. } => "partition".into(),
        ActionKind::Partition { on: false, .. } => "link up".into(),
        ActionKind::SetProfile {
            profile: Some(p), ..
        } => format!("profile {p}"),
        ActionKind::SetProfile { profile: None, .. } => "profile restored".into(),
        ActionKind::HubStop => "hub kill".into(),
        ActionKind::HubStart => "hub start".into(),
        ActionKind::HubMove => "hub move".into(),
        ActionKind::AgentKill { .. } => "agent kill".into(),
        ActionKind::AgentStart { .. } => "agent start".into(),
        ActionKind::Apply { work, .. } => format!("apply {work}"),
    }
}

fn action_agents(k: &ActionKind, all: usize) -> usize {
    match k {
        ActionKind::Partition { agents, .. }
        | ActionKind::SetProfile { agents, .. }
        | ActionKind::AgentKill { agents, .. }
        | ActionKind::AgentStart { agents } => agents.len(),
        _ => all,
    }
}
