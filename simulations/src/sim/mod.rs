//! `tether-sim run`: a real hub and real agents (memory executor) in this process, one
//! fault-injecting relay per agent link, a scripted timeline of faults and works, then invariants.

mod evidence;
mod invariants;
mod report;
mod sample;
mod timeline;
mod world;

pub use invariants::Invariant;
pub use report::{summary, EventRecord, HealRecord, LinkTotals, Report};
pub use sample::{Sample, WorkSample};
pub use timeline::work_document;
pub use world::SimAgent;

use crate::scenario::Scenario;
use anyhow::Context;
use sample::{Sampler, Settled, Watch};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use timeline::Run;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: Option<u64>,
    pub short: bool,
    /// Where `report.json` and the plots go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// Run a scenario. Returns the report; `report.passed` says whether every invariant held.
pub async fn run(scenario: Scenario, cfg: RunConfig) -> anyhow::Result<Report> {
    let plan = scenario.plan(cfg.seed, cfg.short);
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let fleet = world::start(&scenario, &plan, tmp.path()).await?;
    let join_s = fleet.join_s;
    let mut run = Run::new(plan.clone(), scenario, fleet, cfg.verbose);
    run.log(format!(
        "{} agents joined in {join_s:.1}s; timeline of {:.0}s starts",
        plan.agents, plan.duration_s
    ));

    let limits = PolicyLimits::of(&run.scenario);
    let sampler = Sampler {
        admin: run.admin.clone(),
        names: run.names(),
        world: run.world.clone(),
        t0: run.t0,
        rollout_works: limits.concurrency.keys().cloned().collect(),
    };
    let watch = Watch::start(&sampler, &run.agents, &limits.singletons);
    let end_s = run.play().await?;
    run.heal_all().await?;
    run.log("timeline over; every fault healed, waiting for convergence");

    let settle = Duration::from_secs_f64(plan.settle_s);
    let settled = sample::settle(&sampler, &run.applied, plan.agents, settle, end_s).await;
    let (mut samples, double_active) = watch.stop().await;
    samples.extend(settled.last.clone());
    run.log(match settled.converge_s {
        Some(s) => format!("converged {s:.2}s after the end of the timeline"),
        None => format!("NOT converged within {:.0}s", plan.settle_s),
    });

    let checked = check(&mut run, &limits, &settled, &samples, double_active, end_s).await;
    let links = LinkTotals::of(&run.agents);
    for e in &checked.notes {
        run.log(e);
    }
    run.hub.stop().await;
    let report = assemble(
        run,
        &cfg,
        join_s,
        settled.converge_s,
        checked,
        links,
        samples,
    );
    if let Some(out) = &cfg.out {
        report::write_outputs(&report, out)?;
    }
    Ok(report)
}

/// What the scenario's policies promise, which the run must check: progressive rollouts'
/// maxConcurrency (counts only) and the singleton works.
struct PolicyLimits {
    concurrency: BTreeMap<String, usize>,
    singletons: Vec<String>,
}

impl PolicyLimits {
    fn of(s: &Scenario) -> Self {
        let mut concurrency = BTreeMap::new();
        let mut singletons = Vec::new();
        for (work, p) in &s.policies {
            if p.pointer("/rollout/strategy").and_then(|v| v.as_str()) == Some("Progressive") {
                if let Some(n) = p
                    .pointer("/rollout/maxConcurrency")
                    .and_then(|v| v.as_u64())
                {
                    concurrency.insert(work.clone(), n as usize);
                }
            }
            if p.pointer("/failover/mode").and_then(|v| v.as_str()) == Some("Singleton") {
                singletons.push(work.clone());
            }
        }
        Self {
            concurrency,
            singletons,
        }
    }
}

struct Checked {
    invariants: Vec<Invariant>,
    heals: Vec<HealRecord>,
    status_entries: usize,
    /// Worth telling a verbose run, not failures: agents that did not stop cleanly, statuses
    /// still queued.
    notes: Vec<String>,
}

/// Collect the evidence and judge every invariant, in the report's order.
async fn check(
    run: &mut Run,
    limits: &PolicyLimits,
    settled: &Settled,
    samples: &[Sample],
    double_active: Vec<String>,
    end_s: f64,
) -> Checked {
    let (plan, names) = (&run.plan, run.names());
    let mut out = vec![invariants::converged(
        settled,
        &names,
        &run.applied,
        plan.agents,
        plan.settle_s,
    )];
    let content =
        evidence::cluster_content(&run.admin, &run.agents, &run.applied, &run.scenario).await;
    out.push(invariants::cluster_content(&content, &run.applied));

    let mut notes = run.stop_agents().await;
    run.read_hub_counters();
    let histories = evidence::status_histories(&run.admin, &run.agents).await;
    out.push(invariants::status_exactly_once(&histories, run.gaps));
    notes.extend(evidence::still_queued(
        &histories,
        settled.converge_s.is_some(),
    ));
    let deliveries = evidence::deliveries(&run.admin, &run.agents, &run.applied).await;
    out.push(invariants::acked_implies_held(&deliveries));

    let heals = report::heal_times(&run.events, &run.plan, samples, end_s, settled.converge_s);
    out.extend(invariants::converge_after_heal(
        &heals,
        run.scenario.max_converge_s,
    ));
    out.push(invariants::rollout_max_concurrency(
        &limits.concurrency,
        samples,
    ));
    out.push(invariants::singleton_never_twice(
        &limits.singletons,
        double_active,
    ));
    Checked {
        invariants: out,
        heals,
        status_entries: evidence::status_entries(&histories),
        notes,
    }
}

fn assemble(
    run: Run,
    cfg: &RunConfig,
    join_s: f64,
    final_converge_s: Option<f64>,
    checked: Checked,
    links: LinkTotals,
    samples: Vec<Sample>,
) -> Report {
    let passed = !checked.invariants.iter().any(Invariant::failed);
    let works = run
        .applied
        .iter()
        .map(|(w, a)| (w.clone(), a.generation))
        .collect();
    Report {
        scenario: run.plan.name.clone(),
        seed: run.plan.seed,
        short: cfg.short,
        scale: run.plan.scale,
        agents: run.plan.agents,
        duration_s: run.plan.duration_s,
        join_s,
        final_converge_s,
        passed,
        invariants: checked.invariants,
        heals: checked.heals,
        events: run.events,
        works,
        status_entries: checked.status_entries,
        status_gaps_total: run.gaps,
        status_duplicates_dropped: run.duplicates,
        hub_restarts: run.hub_restarts,
        links,
        plan: run.plan,
        samples,
    }
}
