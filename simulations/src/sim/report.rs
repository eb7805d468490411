//! The run's report: `report.json`, the plots and the text summary. The field names are the
//! format docs/simulations.md describes and earlier reports were written in.

use super::invariants::Invariant;
use super::sample::Sample;
use super::world::SimAgent;
use crate::scenario::{ActionKind, Plan};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub planned_s: f64,
    pub t_s: f64,
    pub action: String,
    pub agents: usize,
    pub heal: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealRecord {
    pub t_s: f64,
    pub action: String,
    pub agents: usize,
    /// Seconds until every affected agent was Ready and at the latest generation; `None` if it
    /// never happened within the run.
    pub converge_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LinkTotals {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl LinkTotals {
    /// Summed over every relay of every agent.
    pub(super) fn of(agents: &[SimAgent]) -> Self {
        let mut links = LinkTotals::default();
        for a in agents {
            for r in &a.relays {
                let c = r.counters.snapshot();
                links.bytes_up += c.bytes_up;
                links.bytes_down += c.bytes_down;
                links.packets_up += c.packets_up;
                links.packets_down += c.packets_down;
                links.dropped += c.dropped;
                links.duplicated += c.duplicated;
                links.reordered += c.reordered;
            }
        }
        links
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub short: bool,
    pub scale: f64,
    pub agents: usize,
    pub duration_s: f64,
    pub join_s: f64,
    /// Seconds from the end of the timeline until the whole fleet converged (`None` = never).
    pub final_converge_s: Option<f64>,
    pub passed: bool,
    pub invariants: Vec<Invariant>,
    pub heals: Vec<HealRecord>,
    pub events: Vec<EventRecord>,
    pub works: BTreeMap<String, u64>,
    pub status_entries: usize,
    pub status_gaps_total: u64,
    pub status_duplicates_dropped: u64,
    pub hub_restarts: usize,
    pub links: LinkTotals,
    pub plan: Plan,
    pub samples: Vec<Sample>,
}

/// Per heal, how long until the agents it affected had converged; the end of the timeline
/// counts as one heal of everything.
pub(super) fn heal_times(
    events: &[EventRecord],
    plan: &Plan,
    samples: &[Sample],
    end_s: f64,
    final_converge_s: Option<f64>,
) -> Vec<HealRecord> {
    let mut out = Vec::new();
    for (e, a) in events.iter().zip(&plan.actions).filter(|(e, _)| e.heal) {
        let affected: Vec<usize> = match &a.kind {
            ActionKind::Partition { agents, .. }
            | ActionKind::SetProfile { agents, .. }
            | ActionKind::AgentStart { agents } => agents.clone(),
            _ => (0..plan.agents).collect(),
        };
        let converge_s = samples
            .iter()
            .filter(|s| s.t_s >= e.t_s && s.hub_up)
            .find(|s| {
                affected
                    .iter()
                    .all(|i| s.converged_agents.get(*i).copied().unwrap_or(false))
            })
            .map(|s| s.t_s - e.t_s);
        out.push(HealRecord {
            t_s: e.t_s,
            action: e.action.clone(),
            agents: affected.len(),
            converge_s,
        });
    }
    out.push(HealRecord {
        t_s: end_s,
        action: "end of timeline (heal all)".into(),
        agents: plan.agents,
        converge_s: final_converge_s,
    });
    out
}

pub(super) fn write_outputs(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out.join("report.json"), json)?;
    std::fs::write(out.join("online.svg"), crate::plot::online(report))?;
    std::fs::write(
        out.join("convergence.svg"),
        crate::plot::convergence(report),
    )?;
    Ok(())
}

/// The short text summary printed after a run.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "scenario {} seed {}{}: {} agents, {:.0}s timeline, {} events, {} hub restarts",
        r.scenario,
        r.seed,
        if r.short { " (short)" } else { "" },
        r.agents,
        r.duration_s,
        r.events.len(),
        r.hub_restarts
    );
    let _ = writeln!(
        s,
        "links: {} datagrams relayed, {} dropped, {} duplicated, {} reordered",
        r.links.packets_up + r.links.packets_down,
        r.links.dropped,
        r.links.duplicated,
        r.links.reordered
    );
    let ttc: Vec<f64> = r.heals.iter().filter_map(|h| h.converge_s).collect();
    let never = r.heals.iter().filter(|h| h.converge_s.is_none()).count();
    if !ttc.is_empty() {
        let max = ttc.iter().cloned().fold(0.0, f64::max);
        let mean = ttc.iter().sum::<f64>() / ttc.len() as f64;
        let _ = writeln!(
            s,
            "time to converge after {} heals: mean {mean:.2}s, max {max:.2}s{}",
            ttc.len(),
            if never > 0 {
                format!(", {never} never converged")
            } else {
                String::new()
            }
        );
    }
    for i in &r.invariants {
        let _ = writeln!(
            s,
            "  {:<12} {:<22} {}",
            i.result.to_uppercase(),
            i.name,
            i.detail
        );
    }
    let _ = write!(s, "{}", if r.passed { "PASS" } else { "FAIL" });
    s
}
