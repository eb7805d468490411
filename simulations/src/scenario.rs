//! Scenario files (TOML) and their expansion into a concrete, seeded schedule.
//!
//! A scenario names a fleet (size, label groups, link profiles), a timeline of faults and a
//! workload. [`Scenario::schedule`] turns it into a list of timed [`Action`]s: every random
//! choice (which agents a fraction picks, when a flapping link goes down) is drawn here from the
//! seed, so the same seed always gives the same schedule.

use crate::relay::LinkProfile;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tether_protocol::Labels;

/// Largest fleet a scenario may ask for (one process, a few sockets per agent).
pub const MAX_AGENTS: usize = 2_000;
const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed used when `--seed` is not given.
    #[serde(default = "one")]
    pub seed: u64,
    /// Length of the timeline. At its end every fault still active is healed.
    pub duration_s: f64,
    /// How long to wait after the end for the fleet to converge before failing.
    #[serde(default = "default_settle")]
    pub settle_s: f64,
    /// If set, every heal must be followed by convergence of the agents it affected within
    /// this many seconds (not scaled by the short form).
    #[serde(default)]
    pub max_converge_s: Option<f64>,
    pub fleet: Fleet,
    #[serde(default)]
    pub profiles: BTreeMap<String, LinkProfile>,
    #[serde(default)]
    pub short: Short,
    #[serde(default)]
    pub events: Vec<Event>,
    /// Per work name: extra `spec` fields (`placement`, `rollout`, `failover`, `overrides`)
    /// merged into every apply of that work, exactly as a user would write them.
    #[serde(default)]
    pub policies: BTreeMap<String, serde_json::Value>,
}

fn one() -> u64 {
    1
}
fn default_settle() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub agents: usize,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_grace")]
    pub offline_grace_ms: u64,
    #[serde(default = "default_reconcile")]
    pub reconcile_ms: u64,
    /// Link profile of agents in no group (a name from `[profiles]`, or none = perfect link).
    #[serde(default)]
    pub profile: Option<String>,
    /// 2 gives every agent a second hub address (needed by `hub_move`).
    #[serde(default = "one_usize")]
    pub hub_addresses: usize,
    #[serde(default)]
    pub groups: Vec<Group>,
}

fn default_heartbeat() -> u64 {
    1_000
}
fn default_grace() -> u64 {
    5_000
}
fn default_reconcile() -> u64 {
    2_000
}
fn one_usize() -> usize {
    1
}

/// A share of the fleet with its own labels and link profile. Groups take agents in order;
/// agents left over belong to no group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub share: f64,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub profile: Option<String>,
}

/// The short form (CI): every time multiplied by `scale`, and optionally fewer agents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Short {
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub agents: Option<usize>,
    #[serde(default)]
    pub settle_s: Option<f64>,
}

fn default_scale() -> f64 {
    0.25
}

impl Default for Short {
    fn default() -> Self {
        Self {
            scale: default_scale(),
            agents: None,
            settle_s: None,
        }
    }
}

/// Which agents an event acts on. All fields empty = every agent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// Agents whose labels include all of these.
    #[serde(default)]
    pub labels: Labels,
    /// A seeded random fraction of the agents matching `labels`.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Agents by index (0-based) instead.
    #[serde(default)]
    pub agents: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Drop every datagram of the selected links for `for_s`.
    Partition {
        at_s: f64,
        for_s: f64,
        #[serde(default)]
        select: Select,
    },
    /// Links go down and up repeatedly for `for_s`; each down/up period is drawn from
    /// 0.5x..1.5x of `down_s`/`up_s`.
    Flap {
        at_s: f64,
        for_s: f64,
        down_s: f64,
        up_s: f64,
        #[serde(default)]
        select: Select,
    },
    /// Switch the selected links to another profile (for `for_s`, or for good).
    SetProfile {
        at_s: f64,
        #[serde(default)]
        for_s: Option<f64>,
        profile: String,
        #[serde(default)]
        select: Select,
    },
    /// Stop the hub abruptly (its close frames are dropped) and start it `for_s` later.
    HubKill { at_s: f64, for_s: f64 },
    /// Move the hub to a new port: address 1 goes dark, agents must fail over to address 2.
    HubMove { at_s: f64 },
    /// Kill the selected agents (task aborted, close frames dropped) and restart them after
    /// `for_s`. With `after_delivery`, the kill waits (up to 30 s) until the hub has recorded
    /// the latest generation of that work as delivered to them.
    AgentKill {
        at_s: f64,
        for_s: f64,
        #[serde(default)]
        select: Select,
        #[serde(default)]
        after_delivery: Option<String>,
    },
    /// Apply (create or update: every apply is a new generation) a work of `objects` ConfigMaps
    /// targeting agents whose labels include `target_labels` (empty = all).
    Apply {
        at_s: f64,
        work: String,
        #[serde(default = "one_usize")]
        objects: usize,
        #[serde(default)]
        target_labels: Labels,
    },
    /// Apply a new generation of `work` every `every_s` for `for_s` (load).
    ApplyEvery {
        at_s: f64,
        for_s: f64,
        every_s: f64,
        work: String,
        #[serde(default = "one_usize")]
        objects: usize,
        #[serde(default)]
        target_labels: Labels,
    },
}

/// One concrete step of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionKind {
    Partition {
        agents: Vec<usize>,
        on: bool,
    },
    SetProfile {
        agents: Vec<usize>,
        /// `None` = back to each agent's own profile.
        profile: Option<String>,
    },
    HubStop,
    HubStart,
    HubMove,
    AgentKill {
        agents: Vec<usize>,
        after_delivery: Option<String>,
    },
    AgentStart {
        agents: Vec<usize>,
    },
    Apply {
        work: String,
        objects: usize,
        target_labels: Labels,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub at_s: f64,
    #[serde(flatten)]
    pub kind: ActionKind,
    /// Whether this step ends a fault (time-to-converge is measured from it).
    pub heal: bool,
}

/// What a scenario becomes once the seed and the short form are applied.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub seed: u64,
    pub scale: f64,
    pub agents: usize,
    pub duration_s: f64,
    pub settle_s: f64,
    /// Per agent: name, labels and link profile name.
    pub fleet: Vec<PlannedAgent>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedAgent {
    pub name: String,
    pub labels: Labels,
    pub profile: Option<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", path.display()))?;
        if meta.len() > 1024 * 1024 {
            anyhow::bail!("scenario {} is larger than 1 MiB", path.display());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (work, extra) in &self.policies {
            let doc = crate::sim::work_document(work, 1, "x", &Labels::new(), Some(extra))
                .map_err(|e| anyhow::anyhow!("policies.{work}: {e:#}"))?;
            tether_protocol::work::validate(&doc)
                .map_err(|errors| anyhow::anyhow!("policies.{work}: {}", errors.join("; ")))?;
        }
        let bad = |what: String| Err(anyhow::anyhow!(what));
        if !(self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return bad(format!(
                "duration_s must be in (0, 86400], got {}",
                self.duration_s
            ));
        }
        if !(self.settle_s > 0.0 && self.settle_s <= 3_600.0) {
            return bad(format!(
                "settle_s must be in (0, 3600], got {}",
                self.settle_s
            ));
        }
        let f = &self.fleet;
        if f.agents == 0 || f.agents > MAX_AGENTS {
            return bad(format!(
                "fleet.agents must be 1..={MAX_AGENTS}, got {}",
                f.agents
            ));
        }
        if !(1..=2).contains(&f.hub_addresses) {
            return bad("fleet.hub_addresses must be 1 or 2".into());
        }
        if f.heartbeat_ms < 100 || f.reconcile_ms < 100 || f.offline_grace_ms < f.heartbeat_ms {
            return bad("fleet: heartbeat_ms and reconcile_ms must be >= 100 and offline_grace_ms >= heartbeat_ms".into());
        }
        for (name, p) in &self.profiles {
            p.validate()
                .map_err(|e| anyhow::anyhow!("profile {name:?}: {e}"))?;
        }
        let profile_known = |p: &Option<String>, at: &str| match p {
            Some(p) if !self.profiles.contains_key(p) => bad(format!(
                "{at}: unknown profile {p:?} (known: {:?})",
                self.profiles.keys().collect::<Vec<_>>()
            )),
            _ => Ok(()),
        };
        profile_known(&f.profile, "fleet.profile")?;
        let mut total = 0.0;
        for (i, g) in f.groups.iter().enumerate() {
            if !(g.share > 0.0 && g.share <= 1.0) {
                return bad(format!("fleet.groups[{i}].share must be in (0, 1]"));
            }
            total += g.share;
            profile_known(&g.profile, &format!("fleet.groups[{i}]"))?;
            tether_protocol::names::validate_labels(&g.labels)
                .map_err(|e| anyhow::anyhow!("fleet.groups[{i}].labels: {e}"))?;
        }
        if total > 1.0 + 1e-9 {
            return bad(format!("fleet.groups shares add up to {total} > 1"));
        }
        if !(self.short.scale > 0.0 && self.short.scale <= 1.0) {
            return bad("short.scale must be in (0, 1]".into());
        }
        if let Some(a) = self.short.agents {
            if a == 0 || a > MAX_AGENTS {
                return bad("short.agents must be 1..=MAX_AGENTS".into());
            }
        }
        if self.events.len() > MAX_EVENTS {
            return bad(format!("more than {MAX_EVENTS} events"));
        }
        for (i, e) in self.events.iter().enumerate() {
            e.validate(self)
                .map_err(|err| anyhow::anyhow!("events[{i}]: {err}"))?;
        }
        Ok(())
    }

    /// Expand into a concrete schedule. `short` applies the `[short]` table.
    pub fn plan(&self, seed: Option<u64>, short: bool) -> Plan {
        let seed = seed.unwrap_or(self.seed);
        let (scale, agents, settle) = if short {
            (
                self.short.scale,
                self.short.agents.unwrap_or(self.fleet.agents),
                self.short.settle_s.unwrap_or(self.settle_s),
            )
        } else {
            (1.0, self.fleet.agents, self.settle_s)
        };
        let fleet = self.fleet_layout(agents);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_7e7e_7e7e_0001);
        let mut actions = Vec::new();
        let t = |s: f64| s * scale;
        for e in &self.events {
            match e {
                Event::Partition {
                    at_s,
                    for_s,
                    select,
                } => {
                    let a = select.pick(&fleet, &mut rng);
                    actions.push(act(
                        t(*at_s),
                        ActionKind::Partition {
                            agents: a.clone(),
                            on: true,
                        },
                        false,
                    ));
                    actions.push(act(
                        t(at_s + for_s),
                        ActionKind::Partition {
                            agents: a,
                            on: false,
                        },
                        true,
                    ));
                }
                Event::Flap {
                    at_s,
                    for_s,
                    down_s,
                    up_s,
                    select,
                } => {
                    let a = select.pick(&fleet, &mut rng);
                    let end = t(at_s + for_s);
                    let mut now = t(*at_s);
                    while now < end {
                        actions.push(act(
                            now,
                            ActionKind::Partition {
                                agents: a.clone(),
                                on: true,
                            },
                            false,
                        ));
                        now += t(down_s * rng.random_range(0.5..1.5));
                        let up_at = now.min(end);
                        // Every return of the link is a heal; only the last one is marked, so
                        // time-to-converge is measured once the flapping stops.
                        actions.push(act(
                            up_at,
                            ActionKind::Partition {
                                agents: a.clone(),
                                on: false,
                            },
                            up_at >= end,
                        ));
                        now += t(up_s * rng.random_range(0.5..1.5));
                    }
                    if let Some(last) = actions.last_mut() {
                        last.heal = true;
                    }
                }
                Event::SetProfile {
                    at_s,
                    for_s,
                    profile,
                    select,
                } => {
                    let a = select.pick(&fleet, &mut rng);
                    actions.push(act(
                        t(*at_s),
                        ActionKind::SetProfile {
                            agents: a.clone(),
                            profile: Some(profile.clone()),
                        },
                        false,
                    ));
                    if let Some(f) = for_s {
                        actions.push(act(
                            t(at_s + f),
                            ActionKind::SetProfile {
                                agents: a,
                                profile: None,
                            },
                            true,
                        ));
                    }
                }
                Event::HubKill { at_s, for_s } => {
                    actions.push(act(t(*at_s), ActionKind::HubStop, false));
                    actions.push(act(t(at_s + for_s), ActionKind::HubStart, true));
                }
                Event::HubMove { at_s } => actions.push(act(t(*at_s), ActionKind::HubMove, true)),
                Event::AgentKill {
                    at_s,
                    for_s,
                    select,
                    after_delivery,
                } => {
                    let a = select.pick(&fleet, &mut rng);
                    actions.push(act(
                        t(*at_s),
                        ActionKind::AgentKill {
                            agents: a.clone(),
                            after_delivery: after_delivery.clone(),
                        },
                        false,
                    ));
                    actions.push(act(
                        t(at_s + for_s),
                        ActionKind::AgentStart { agents: a },
                        true,
                    ));
                }
                Event::Apply {
                    at_s,
                    work,
                    objects,
                    target_labels,
                } => actions.push(act(
                    t(*at_s),
                    ActionKind::Apply {
                        work: work.clone(),
                        objects: *objects,
                        target_labels: target_labels.clone(),
                    },
                    false,
                )),
                Event::ApplyEvery {
                    at_s,
                    for_s,
                    every_s,
                    work,
                    objects,
                    target_labels,
                } => {
                    let mut now = *at_s;
                    while now <= at_s + for_s {
                        actions.push(act(
                            t(now),
                            ActionKind::Apply {
                                work: work.clone(),
                                objects: *objects,
                                target_labels: target_labels.clone(),
                            },
                            false,
                        ));
                        now += every_s;
                    }
                }
            }
        }
        // Stable: events at the same time keep file order.
        actions.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Plan {
            name: self.name.clone(),
            seed,
            scale,
            agents,
            duration_s: t(self.duration_s),
            settle_s: settle,
            fleet,
            actions,
        }
    }

    fn fleet_layout(&self, agents: usize) -> Vec<PlannedAgent> {
        let mut out = Vec::with_capacity(agents);
        for g in &self.fleet.groups {
            let n = ((g.share * agents as f64).round() as usize).min(agents - out.len());
            for _ in 0..n {
                out.push(PlannedAgent {
                    name: String::new(),
                    labels: g.labels.clone(),
                    profile: g.profile.clone().or_else(|| self.fleet.profile.clone()),
                });
            }
        }
        while out.len() < agents {
            out.push(PlannedAgent {
                name: String::new(),
                labels: Labels::new(),
                profile: self.fleet.profile.clone(),
            });
        }
        for (i, a) in out.iter_mut().enumerate() {
            a.name = format!("site-{i:04}");
            a.labels
                .insert("sim.tether.dev/index".into(), i.to_string());
        }
        out
    }
}

fn act(at_s: f64, kind: ActionKind, heal: bool) -> Action {
    Action { at_s, kind, heal }
}

impl Select {
    /// The agents this selection names, in index order.
    pub fn pick(&self, fleet: &[PlannedAgent], rng: &mut StdRng) -> Vec<usize> {
        if !self.agents.is_empty() {
            return self
                .agents
                .iter()
                .copied()
                .filter(|i| *i < fleet.len())
                .collect();
        }
        let mut matching: Vec<usize> = fleet
            .iter()
            .enumerate()
            .filter(|(_, a)| self.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .map(|(i, _)| i)
            .collect();
        if let Some(f) = self.fraction {
            matching.shuffle(rng);
            let n = ((f * matching.len() as f64).round() as usize).min(matching.len());
            matching.truncate(n);
            matching.sort_unstable();
        }
        matching
    }
}

fn check_time(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 0 and 86400 seconds, got {v}"
        ))
    }
}

fn check_positive(name: &str, v: f64) -> Result<(), String> {
    check_time(name, v)?;
    if v < 0.01 {
        return Err(format!("{name} must be at least 0.01 s, got {v}"));
    }
    Ok(())
}

impl Event {
    fn validate(&self, s: &Scenario) -> Result<(), String> {
        let sel = |sel: &Select| -> Result<(), String> {
            if let Some(f) = sel.fraction {
                if !(0.0..=1.0).contains(&f) {
                    return Err(format!("select.fraction must be in [0, 1], got {f}"));
                }
            }
            if let Some(i) = sel.agents.iter().find(|i| **i >= s.fleet.agents) {
                return Err(format!(
                    "select.agents: index {i} but the fleet has {} agents",
                    s.fleet.agents
                ));
            }
            Ok(())
        };
        let work = |w: &str, objects: usize| -> Result<(), String> {
            tether_protocol::names::validate_cluster_name(w)
                .map_err(|e| format!("work name {w:?}: {e}"))?;
            if objects == 0 || objects > 1_000 {
                return Err(format!("objects must be 1..=1000, got {objects}"));
            }
            Ok(())
        };
        match self {
            Event::Partition {
                at_s,
                for_s,
                select,
            } => {
                check_time("at_s", *at_s)?;
                check_positive("for_s", *for_s)?;
                sel(select)
            }
            Event::Flap {
                at_s,
                for_s,
                down_s,
                up_s,
                select,
            } => {
                check_time("at_s", *at_s)?;
                check_positive("for_s", *for_s)?;
                check_positive("down_s", *down_s)?;
                check_positive("up_s", *up_s)?;
                sel(select)
            }
            Event::SetProfile {
                at_s,
                for_s,
                profile,
                select,
            } => {
                check_time("at_s", *at_s)?;
                if let Some(f) = for_s {
                    check_positive("for_s", *f)?;
                }
                if !s.profiles.contains_key(profile) {
                    return Err(format!("unknown profile {profile:?}"));
                }
                sel(select)
            }
            Event::HubKill { at_s, for_s } => {
                check_time("at_s", *at_s)?;
                check_positive("for_s", *for_s)
            }
            Event::HubMove { at_s } => {
                check_time("at_s", *at_s)?;
                if s.fleet.hub_addresses != 2 {
                    return Err("hub_move needs fleet.hub_addresses = 2".into());
                }
                Ok(())
            }
            Event::AgentKill {
                at_s,
                for_s,
                select,
                after_delivery,
            } => {
                check_time("at_s", *at_s)?;
                check_positive("for_s", *for_s)?;
                if let Some(w) = after_delivery {
                    work(w, 1)?;
                }
                sel(select)
            }
            Event::Apply {
                at_s,
                work: w,
                objects,
                target_labels,
            } => {
                check_time("at_s", *at_s)?;
                work(w, *objects)?;
                tether_protocol::names::validate_labels(target_labels)
                    .map_err(|e| format!("target_labels: {e}"))
            }
            Event::ApplyEvery {
                at_s,
                for_s,
                every_s,
                work: w,
                objects,
                target_labels,
            } => {
                check_time("at_s", *at_s)?;
                check_positive("for_s", *for_s)?;
                check_positive("every_s", *every_s)?;
                if for_s / every_s > 1_000.0 {
                    return Err("apply_every: more than 1000 applies".into());
                }
                work(w, *objects)?;
                tether_protocol::names::validate_labels(target_labels)
                    .map_err(|e| format!("target_labels: {e}"))
            }
        }
    }
}

impl Plan {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = r#"
name = "t"
duration_s = 60
[fleet]
agents = 10
[[fleet.groups]]
share = 0.5
labels = { region = "north" }
[[events]]
kind = "partition"
at_s = 5
for_s = 10
select = { fraction = 0.5 }
[[events]]
kind = "flap"
at_s = 20
for_s = 20
down_s = 2
up_s = 3
select = { labels = { region = "north" } }
"#;

    #[test]
    fn same_seed_same_schedule() {
        let s = Scenario::parse(S).unwrap();
        let a = serde_json::to_string(&s.plan(Some(3), false).actions).unwrap();
        let b = serde_json::to_string(&s.plan(Some(3), false).actions).unwrap();
        let c = serde_json::to_string(&s.plan(Some(4), false).actions).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let p = s.plan(Some(3), true);
        assert!(p.actions.iter().all(|a| a.at_s <= 0.25 * 40.0 + 1e-9));
    }

    #[test]
    fn clear_errors() {
        let err = |t: &str| Scenario::parse(t).unwrap_err().to_string();
        assert!(err("name = 1").contains("invalid type"));
        let e = err(&S.replace("kind = \"flap\"", "kind = \"flop\""));
        assert!(e.contains("flop"), "{e}");
        let e = err(&S.replace("fraction = 0.5", "fraction = 5.0"));
        assert!(e.contains("events[0]") && e.contains("fraction"), "{e}");
        let e = err(&S.replace("agents = 10", "agents = 0"));
        assert!(e.contains("fleet.agents"), "{e}");
    }
}
