//! Progressive rollout decisions: a pure function from (strategy, fleet view, time) to which
//! clusters may receive a work's new generation. The hub drives it; the simulator replays it.
//!
//! Edge rule first: under the default `Skip` offline policy an unreachable cluster never holds a
//! concurrency slot. It is marked pending and catches up when it returns, and the rollout
//! completes on the rest (Fleet #192/#594 and OCM's never-timing-out ToApply are what we avoid).

use std::collections::BTreeSet;

/// A count or a percentage of the clusters in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u32),
    Percent(u8),
}

impl Limit {
    /// Resolve against `total` clusters. Percentages round down but never below 1 for
    /// concurrency (a rollout must be able to move); failure budgets may be 0.
    pub fn resolve(self, total: usize, at_least_one: bool) -> usize {
        let n = match self {
            Limit::Count(n) => n as usize,
            Limit::Percent(p) => total * usize::from(p.min(100)) / 100,
        };
        if at_least_one {
            n.max(1)
        } else {
            n
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfflinePolicy {
    /// Offline clusters hold no slot; they catch up when they return.
    #[default]
    Skip,
    /// An offline cluster that was admitted keeps its slot until it returns.
    Wait,
    /// An offline cluster counts as a failure.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Members, in rollout order.
    pub members: Vec<String>,
    /// A mandatory group tolerates no failure.
    pub mandatory: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    pub max_concurrency: Limit,
    pub max_failures: Limit,
    /// Soak time: a healthy cluster counts as done only after this long.
    pub min_success_ms: u64,
    /// An update still not healthy after this long counts as failed.
    pub progress_deadline_ms: Option<u64>,
    pub offline: OfflinePolicy,
    /// Canary groups, in order; clusters in no group form a final implicit group.
    pub groups: Vec<Group>,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            max_concurrency: Limit::Percent(25),
            max_failures: Limit::Count(0),
            min_success_ms: 0,
            progress_deadline_ms: None,
            offline: OfflinePolicy::Skip,
            groups: Vec::new(),
        }
    }
}

/// What the hub knows about one cluster and the target generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not admitted yet: still on an older generation (or none).
    NotStarted,
    /// Admitted; the new generation is being delivered or applied.
    Updating { since_ms: u64 },
    /// Reports the new generation healthy (Available) since then.
    Healthy { since_ms: u64 },
    /// Reports the new generation failed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterProgress {
    pub name: String,
    pub online: bool,
    pub progress: Progress,
    /// Inside its maintenance window (or it has none): it may be admitted now.
    pub admissible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Progressing,
    Paused(String),
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Clusters that may hold the new generation (already started ones included).
    pub admitted: BTreeSet<String>,
    /// Newly admitted by this decision.
    pub newly_admitted: Vec<String>,
    pub phase: Phase,
    pub done: usize,
    pub in_flight: usize,
    pub failed: usize,
    /// Offline clusters left behind under `Skip`; they catch up on return.
    pub pending_offline: usize,
}

fn is_done(p: Progress, now_ms: u64, s: &Strategy) -> bool {
    matches!(p, Progress::Healthy { since_ms } if now_ms.saturating_sub(since_ms) >= s.min_success_ms)
}

fn is_failed(c: &ClusterProgress, now_ms: u64, s: &Strategy) -> bool {
    let reported = match c.progress {
        Progress::Failed => true,
        Progress::Updating { since_ms } => s
            .progress_deadline_ms
            .is_some_and(|d| now_ms.saturating_sub(since_ms) > d),
        _ => false,
    };
    let lost = !c.online
        && s.offline == OfflinePolicy::Fail
        && c.progress != Progress::NotStarted
        && !is_done(c.progress, now_ms, s);
    reported || lost
}

/// Occupies a concurrency slot: admitted, not done, not failed, and (under `Skip`) reachable.
fn holds_slot(c: &ClusterProgress, now_ms: u64, s: &Strategy) -> bool {
    c.progress != Progress::NotStarted
        && !is_done(c.progress, now_ms, s)
        && !is_failed(c, now_ms, s)
        && (c.online || s.offline == OfflinePolicy::Wait)
}

/// `paused` is the operator's pause; `clusters` is every targeted cluster.
pub fn decide(
    strategy: &Strategy,
    clusters: &[ClusterProgress],
    paused: bool,
    now_ms: u64,
) -> Decision {
    let total = clusters.len();
    let max_in_flight = strategy.max_concurrency.resolve(total, true);
    let budget = strategy.max_failures.resolve(total, false);
    let mut admitted: BTreeSet<String> = clusters
        .iter()
        .filter(|c| c.progress != Progress::NotStarted)
        .map(|c| c.name.clone())
        .collect();
    let failed: Vec<&ClusterProgress> = clusters
        .iter()
        .filter(|c| is_failed(c, now_ms, strategy))
        .collect();
    let mut in_flight = clusters
        .iter()
        .filter(|c| holds_slot(c, now_ms, strategy))
        .count();
    let done = clusters
        .iter()
        .filter(|c| is_done(c.progress, now_ms, strategy))
        .count();

    // Groups in order; clusters in no group form the last one.
    let grouped: BTreeSet<&str> = strategy
        .groups
        .iter()
        .flat_map(|g| g.members.iter().map(String::as_str))
        .collect();
    let mut groups: Vec<(bool, Vec<&ClusterProgress>)> = strategy
        .groups
        .iter()
        .map(|g| {
            (
                g.mandatory,
                g.members
                    .iter()
                    .filter_map(|m| clusters.iter().find(|c| &c.name == m))
                    .collect(),
            )
        })
        .collect();
    groups.push((
        false,
        clusters
            .iter()
            .filter(|c| !grouped.contains(c.name.as_str()))
            .collect(),
    ));

    let mandatory_failure = groups.iter().any(|(mandatory, members)| {
        *mandatory && members.iter().any(|c| is_failed(c, now_ms, strategy))
    });
    let stop = if paused {
        Some("paused by an operator".to_string())
    } else if failed.len() > budget {
        Some(format!(
            "failure budget exceeded: {} failed, {budget} allowed",
            failed.len()
        ))
    } else if mandatory_failure {
        Some("a cluster in a mandatory group failed".to_string())
    } else {
        None
    };

    let mut newly_admitted = Vec::new();
    let mut pending_offline = 0;
    if stop.is_none() {
        'groups: for (_, members) in &groups {
            for c in members {
                if c.progress != Progress::NotStarted || !c.admissible {
                    continue;
                }
                if !c.online && strategy.offline != OfflinePolicy::Wait {
                    // Skip (and Fail: nothing to count until it was admitted): catch up later.
                    continue;
                }
                if in_flight >= max_in_flight {
                    break 'groups;
                }
                admitted.insert(c.name.clone());
                newly_admitted.push(c.name.clone());
                in_flight += 1;
            }
            // A later group starts only once this one has settled: every reachable member done
            // or failed, none still in flight, none still waiting for a slot.
            let settled = members.iter().all(|c| {
                is_done(c.progress, now_ms, strategy)
                    || is_failed(c, now_ms, strategy)
                    || (c.progress == Progress::NotStarted
                        && !c.online
                        && c.admissible
                        && strategy.offline != OfflinePolicy::Wait)
            });
            if !settled {
                break;
            }
        }
    }
    for c in clusters {
        if !c.online
            && c.progress == Progress::NotStarted
            && strategy.offline == OfflinePolicy::Skip
        {
            pending_offline += 1;
        }
    }
    let all_settled = clusters.iter().all(|c| {
        is_done(c.progress, now_ms, strategy)
            || is_failed(c, now_ms, strategy)
            || (!c.online
                && c.admissible
                && c.progress == Progress::NotStarted
                && strategy.offline == OfflinePolicy::Skip)
    });
    let phase = match stop {
        Some(why) => Phase::Paused(why),
        None if all_settled && newly_admitted.is_empty() => Phase::Complete,
        None => Phase::Progressing,
    };
    Decision {
        admitted,
        newly_admitted,
        phase,
        done,
        in_flight,
        failed: failed.len(),
        pending_offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};

    fn c(name: &str, online: bool, progress: Progress) -> ClusterProgress {
        ClusterProgress {
            name: name.into(),
            online,
            progress,
            admissible: true,
        }
    }

    #[test]
    fn offline_sites_do_not_block_a_skip_rollout() {
        let s = Strategy {
            max_concurrency: Limit::Count(2),
            ..Strategy::default()
        };
        let mut fleet: Vec<_> = (0..6)
            .map(|i| c(&format!("c{i}"), i != 3, Progress::NotStarted))
            .collect();
        let mut now = 0;
        for _ in 0..10 {
            let d = decide(&s, &fleet, false, now);
            assert!(d.in_flight <= 2);
            for f in fleet.iter_mut() {
                if d.newly_admitted.contains(&f.name) {
                    f.progress = Progress::Updating { since_ms: now };
                } else if let Progress::Updating { .. } = f.progress {
                    f.progress = Progress::Healthy { since_ms: now };
                }
            }
            now += 1000;
        }
        let d = decide(&s, &fleet, false, now);
        assert_eq!(d.phase, Phase::Complete);
        assert_eq!(d.done, 5);
        assert_eq!(d.pending_offline, 1);
        // The sixth returns: it is admitted at once.
        fleet[3].online = true;
        let d = decide(&s, &fleet, false, now);
        assert_eq!(d.newly_admitted, vec!["c3".to_string()]);
    }

    #[test]
    fn clusters_outside_their_window_wait() {
        let s = Strategy {
            max_concurrency: Limit::Count(5),
            ..Strategy::default()
        };
        let mut fleet = vec![
            c("a", true, Progress::NotStarted),
            c("b", true, Progress::NotStarted),
        ];
        fleet[1].admissible = false;
        let d = decide(&s, &fleet, false, 0);
        assert_eq!(d.newly_admitted, vec!["a".to_string()]);
        fleet[0].progress = Progress::Healthy { since_ms: 0 };
        assert_eq!(
            decide(&s, &fleet, false, 0).phase,
            Phase::Progressing,
            "b still waits"
        );
        fleet[1].admissible = true;
        assert_eq!(
            decide(&s, &fleet, false, 0).newly_admitted,
            vec!["b".to_string()]
        );
    }

    #[test]
    fn failure_budget_pauses() {
        let s = Strategy {
            max_concurrency: Limit::Count(1),
            max_failures: Limit::Count(1),
            ..Strategy::default()
        };
        let fleet = vec![
            c("a", true, Progress::Failed),
            c("b", true, Progress::Failed),
            c("c", true, Progress::NotStarted),
        ];
        let d = decide(&s, &fleet, false, 0);
        assert!(matches!(d.phase, Phase::Paused(ref why) if why.contains("failure budget")));
        assert!(d.newly_admitted.is_empty());
    }

    #[test]
    fn canary_group_goes_first_and_soaks() {
        let s = Strategy {
            max_concurrency: Limit::Count(10),
            min_success_ms: 5_000,
            groups: vec![Group {
                name: "canary".into(),
                members: vec!["z".into()],
                mandatory: true,
            }],
            ..Strategy::default()
        };
        let fleet = vec![
            c("a", true, Progress::NotStarted),
            c("z", true, Progress::NotStarted),
        ];
        let d = decide(&s, &fleet, false, 0);
        assert_eq!(d.newly_admitted, vec!["z".to_string()]);
        let fleet = vec![
            c("a", true, Progress::NotStarted),
            c("z", true, Progress::Healthy { since_ms: 0 }),
        ];
        assert!(
            decide(&s, &fleet, false, 1_000).newly_admitted.is_empty(),
            "soak not over"
        );
        assert_eq!(
            decide(&s, &fleet, false, 5_000).newly_admitted,
            vec!["a".to_string()]
        );
    }

    fn progress() -> impl Strategy_<Value = Progress> {
        prop_oneof![
            Just(Progress::NotStarted),
            (0u64..10_000).prop_map(|since_ms| Progress::Updating { since_ms }),
            (0u64..10_000).prop_map(|since_ms| Progress::Healthy { since_ms }),
            Just(Progress::Failed),
        ]
    }
    use proptest::strategy::Strategy as Strategy_;

    proptest! {
        #[test]
        fn invariants_hold(
            states in proptest::collection::vec((any::<bool>(), progress()), 1..30),
            conc in 1u32..6,
            budget in 0u32..4,
            policy in prop_oneof![Just(OfflinePolicy::Skip), Just(OfflinePolicy::Wait), Just(OfflinePolicy::Fail)],
            soak in 0u64..3_000,
            paused in any::<bool>(),
            now in 0u64..20_000,
        ) {
            let s = Strategy {
                max_concurrency: Limit::Count(conc),
                max_failures: Limit::Count(budget),
                min_success_ms: soak,
                offline: policy,
                ..Strategy::default()
            };
            let fleet: Vec<_> = states.iter().enumerate().map(|(i, (online, p))| c(&format!("c{i:02}"), *online, *p)).collect();
            let d = decide(&s, &fleet, paused, now);
            // Deterministic.
            prop_assert_eq!(&d, &decide(&s, &fleet, paused, now));
            // Never admits past maxConcurrency (it may already be over if input was).
            let before = fleet.iter().filter(|c| holds_slot(c, now, &s)).count();
            if !d.newly_admitted.is_empty() {
                prop_assert!(before + d.newly_admitted.len() <= conc as usize);
            }
            // Paused or over budget: nothing new.
            if paused || d.failed > budget as usize {
                prop_assert!(d.newly_admitted.is_empty());
            }
            // Skip: offline clusters are never newly admitted and hold no slot.
            if policy == OfflinePolicy::Skip {
                for n in &d.newly_admitted {
                    prop_assert!(fleet.iter().any(|c| &c.name == n && c.online));
                }
            }
            // Already started clusters stay admitted (no churn, nothing rolled back here).
            for f in &fleet {
                if f.progress != Progress::NotStarted {
                    prop_assert!(d.admitted.contains(&f.name));
                }
            }
        }
    }

    proptest! {
        /// A whole rollout under random outages, successes and failures: admissions never
        /// exceed maxConcurrency, and once every cluster is online and healthy it completes.
        #[test]
        fn runs_respect_limits_and_finish(
            n in 1usize..20,
            conc in 1u32..5,
            budget in 0u32..3,
            events in proptest::collection::vec((0usize..20, 0u8..4), 0..200),
        ) {
            let s = Strategy { max_concurrency: Limit::Count(conc), max_failures: Limit::Count(budget), ..Strategy::default() };
            let mut fleet: Vec<_> = (0..n).map(|i| c(&format!("c{i:02}"), true, Progress::NotStarted)).collect();
            let mut now = 0;
            for (target, what) in events {
                let d = decide(&s, &fleet, false, now);
                // Admission never goes past the limit. (A cluster admitted before it went
                // offline may come back mid-update and briefly push the count over: its update
                // was already delivered and cannot be taken back. It blocks new admissions.)
                if !d.newly_admitted.is_empty() {
                    prop_assert!(fleet.iter().filter(|c| holds_slot(c, now, &s)).count() + d.newly_admitted.len() <= conc as usize);
                }
                for f in fleet.iter_mut() {
                    if d.newly_admitted.contains(&f.name) {
                        f.progress = Progress::Updating { since_ms: now };
                    }
                }
                if let Some(f) = fleet.get_mut(target % n) {
                    match (what, f.progress) {
                        (0, _) => f.online = !f.online,
                        (1, Progress::Updating { .. }) => f.progress = Progress::Healthy { since_ms: now },
                        (2, Progress::Updating { .. }) if budget > 0 => f.progress = Progress::Failed,
                        _ => {}
                    }
                }
                now += 100;
            }
            // Heal everything: all online, every update succeeds.
            for _ in 0..(2 * n + 2) {
                for f in fleet.iter_mut() { f.online = true; }
                let d = decide(&s, &fleet, false, now);
                if matches!(d.phase, Phase::Paused(_)) { return Ok(()); }
                for f in fleet.iter_mut() {
                    if d.newly_admitted.contains(&f.name) {
                        f.progress = Progress::Updating { since_ms: now };
                    } else if let Progress::Updating { .. } = f.progress {
                        f.progress = Progress::Healthy { since_ms: now };
                    }
                }
                now += 100;
            }
            prop_assert_eq!(decide(&s, &fleet, false, now).phase, Phase::Complete);
        }
    }
}
