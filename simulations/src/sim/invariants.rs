//! The invariants a run is judged by, one function each, on evidence already collected
//! (`evidence.rs`, the samples): judging reads nothing, so a test can hand any of them a
//! failing case. Names and details go into the report as they are.

use super::evidence::{Content, StatusHistory, WorkDeliveries};
use super::report::HealRecord;
use super::sample::{Sample, Settled};
use super::timeline::Applied;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    /// `passed`, `failed` or `not_checked`.
    pub result: String,
    pub detail: String,
}

impl Invariant {
    fn new(name: &str, failures: Vec<String>, ok_detail: String) -> Self {
        Self {
            name: name.into(),
            result: if failures.is_empty() {
                "passed"
            } else {
                "failed"
            }
            .into(),
            detail: if failures.is_empty() {
                ok_detail
            } else {
                let n = failures.len();
                let mut f = failures;
                f.truncate(10);
                format!("{n} failure(s): {}", f.join("; "))
            },
        }
    }

    fn not_checked(name: &str, why: &str) -> Self {
        Self {
            name: name.into(),
            result: "not_checked".into(),
            detail: why.into(),
        }
    }

    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

/// Every agent Ready and at the latest generation of each work targeting it, within the
/// settle time; if not, who and which works were behind at the last sample.
pub(super) fn converged(
    settled: &Settled,
    names: &[String],
    applied: &BTreeMap<String, Applied>,
    agents: usize,
    settle_s: f64,
) -> Invariant {
    let mut failures = Vec::new();
    if settled.converge_s.is_none() {
        if let Some(s) = &settled.last {
            for (i, ok) in s.converged_agents.iter().enumerate() {
                if !ok {
                    failures.push(format!("{} not Ready at the latest generation", names[i]));
                }
            }
            for (w, a) in applied {
                match s.works.get(w) {
                    Some(ws) if ws.generation != a.generation => failures.push(format!(
                        "{w}: hub at generation {} but {} applies were made",
                        ws.generation, a.generation
                    )),
                    Some(ws) if ws.applied != ws.targeted || ws.delivered != ws.targeted => {
                        failures.push(format!(
                            "{w} generation {}: {} targeted, {} delivered, {} applied",
                            ws.generation, ws.targeted, ws.delivered, ws.applied
                        ))
                    }
                    None => failures.push(format!("{w}: unknown to the hub")),
                    _ => {}
                }
            }
        }
        if failures.is_empty() {
            failures.push(format!("not converged within {settle_s:.0}s"));
        }
    }
    Invariant::new(
        "converged",
        failures,
        format!(
            "all {agents} agents Ready and at the latest generation {:.2}s after the last fault",
            settled.converge_s.unwrap_or_default()
        ),
    )
}

/// The clusters themselves hold the latest content (memory executors). For works with a
/// placement policy the hub's final choice says who should hold them; nobody else may.
pub(super) fn cluster_content(content: &Content, applied: &BTreeMap<String, Applied>) -> Invariant {
    let mut failures = Vec::new();
    for a in &content.clusters {
        for (w, ap) in applied {
            let prefix = format!("{w}-");
            let should_hold = match content.placed.get(w) {
                Some(set) => set.contains(&a.name),
                None => ap.target.iter().all(|(k, v)| a.labels.get(k) == Some(v)),
            };
            if !should_hold {
                if content.placed.contains_key(w)
                    && a.objects.iter().any(|(n, _)| n.starts_with(&prefix))
                {
                    failures.push(format!("{}: holds {w} but is not placed there", a.name));
                }
                continue;
            }
            let want = format!("{w}-v{}", ap.applies);
            let have: Vec<&serde_json::Value> = a
                .objects
                .iter()
                .filter(|(n, _)| n.starts_with(&prefix))
                .map(|(_, v)| v)
                .collect();
            if have.is_empty()
                || have
                    .iter()
                    .any(|v| v.pointer("/data/value").and_then(|x| x.as_str()) != Some(&want))
            {
                failures.push(format!("{}: {w} objects are not at {want}", a.name));
            }
        }
    }
    Invariant::new(
        "cluster_content",
        failures,
        "every simulated cluster holds the latest content of its works".into(),
    )
}

/// Status history: strictly increasing per cluster, newest acknowledged status stored,
/// nothing stored that the agent never assigned, no gap counted (`gaps`: the hub's gap
/// counter summed over its lifetimes).
pub(super) fn status_exactly_once(histories: &[StatusHistory], gaps: u64) -> Invariant {
    let mut failures = Vec::new();
    for h in histories {
        let (cluster, seqs, outbox) = match h {
            StatusHistory::Unreadable { cluster, error } => {
                failures.push(format!("{cluster}: status log unreadable: {error}"));
                continue;
            }
            StatusHistory::Read {
                cluster,
                seqs,
                outbox,
            } => (cluster, seqs, outbox),
        };
        for pair in seqs.windows(2) {
            if pair[1] <= pair[0] {
                failures.push(format!(
                    "{cluster}: seq {} after {} (duplicate or reordered)",
                    pair[1], pair[0]
                ));
            }
        }
        match outbox {
            Ok(o) => {
                let last = seqs.last().copied().unwrap_or(0);
                if last != o.acked {
                    failures.push(format!(
                        "{cluster}: agent had status acknowledged through {}, hub's newest is {last}",
                        o.acked
                    ));
                }
                if seqs.iter().any(|s| *s >= o.next) {
                    failures.push(format!(
                        "{cluster}: hub holds a seq the agent never assigned"
                    ));
                }
            }
            Err(e) => failures.push(format!("{cluster}: agent store unreadable: {e}")),
        }
    }
    if gaps > 0 {
        failures.push(format!(
            "tether_hub_status_gaps_total summed over hub lifetimes = {gaps}"
        ));
    }
    Invariant::new(
        "status_exactly_once",
        failures,
        format!(
            "{} status entries, strictly increasing per cluster, newest acknowledged one stored everywhere, 0 gaps",
            super::evidence::status_entries(histories)
        ),
    )
}

/// Acknowledged implies durably held: the hub never records a delivery the agent's store does
/// not hold.
pub(super) fn acked_implies_held(works: &[WorkDeliveries]) -> Invariant {
    let mut failures = Vec::new();
    for w in works {
        let Some(deliveries) = &w.deliveries else {
            failures.push(format!("{}: unknown to the hub", w.work));
            continue;
        };
        for d in deliveries {
            match &d.held {
                Ok(Some(g)) if *g >= d.generation => {}
                Ok(held) => failures.push(format!(
                    "{}: hub recorded {} generation {} delivered, agent store holds {held:?}",
                    d.cluster, w.work, d.generation
                )),
                Err(e) => failures.push(format!("{}: store unreadable: {e}", d.cluster)),
            }
        }
    }
    Invariant::new(
        "acked_implies_held",
        failures,
        "every delivery the hub recorded is in the agent's store".into(),
    )
}

/// Time to converge after each heal, if the scenario sets a bound (`None`: not reported).
pub(super) fn converge_after_heal(heals: &[HealRecord], max: Option<f64>) -> Option<Invariant> {
    let max = max?;
    let failures = heals
        .iter()
        .filter(|h| h.converge_s.is_none_or(|c| c > max))
        .map(|h| format!("{} at {:.1}s: {:?}", h.action, h.t_s, h.converge_s))
        .collect();
    Some(Invariant::new(
        "converge_after_heal",
        failures,
        format!("every heal converged within {max}s"),
    ))
}

/// No progressive rollout ever admitted more clusters than its maxConcurrency (`limits`), by
/// the admission peak the hub reports in the samples.
pub(super) fn rollout_max_concurrency(
    limits: &BTreeMap<String, usize>,
    samples: &[Sample],
) -> Invariant {
    if limits.is_empty() {
        return Invariant::not_checked(
            "rollout_max_concurrency",
            "no progressive rollout in this scenario",
        );
    }
    let mut failures = Vec::new();
    let mut details = Vec::new();
    for (w, limit) in limits {
        let peak = samples
            .iter()
            .filter_map(|s| s.rollouts.get(w))
            .map(|r| r.1)
            .max()
            .unwrap_or(0);
        let seen = samples
            .iter()
            .filter_map(|s| s.rollouts.get(w))
            .map(|r| r.0)
            .max()
            .unwrap_or(0);
        if peak > *limit {
            failures.push(format!(
                "{w}: {peak} slots in use at an admission, maxConcurrency {limit}"
            ));
        }
        details.push(format!(
            "{w}: admission peak {peak}, most updating at a sample {seen}, limit {limit}"
        ));
    }
    Invariant::new("rollout_max_concurrency", failures, details.join("; "))
}

/// No singleton was ever held by two simulated clusters at once (`double_active`: what the
/// singleton monitor saw).
pub(super) fn singleton_never_twice(
    singletons: &[String],
    double_active: Vec<String>,
) -> Invariant {
    if singletons.is_empty() {
        return Invariant::not_checked("singleton_never_twice", "no singleton in this scenario");
    }
    Invariant::new(
        "singleton_never_twice",
        double_active,
        format!(
            "{} never held by two simulated clusters (checked every 10 ms)",
            singletons.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::evidence::{Delivery, Holdings, Outbox};
    use super::super::sample::WorkSample;
    use super::*;
    use tether_protocol::Labels;

    fn applied(generation: u64, applies: usize) -> Applied {
        Applied {
            generation,
            applies,
            target: Labels::new(),
        }
    }

    fn sample(converged_agents: Vec<bool>, works: &[(&str, u64, usize, usize)]) -> Sample {
        Sample {
            t_s: 1.0,
            hub_up: true,
            ready: converged_agents.len(),
            reachable: converged_agents.len(),
            converged: converged_agents.iter().filter(|c| **c).count(),
            works: works
                .iter()
                .map(|&(w, generation, targeted, applied)| {
                    let s = WorkSample {
                        generation,
                        targeted,
                        delivered: targeted,
                        applied,
                    };
                    (w.to_string(), s)
                })
                .collect(),
            rollouts: BTreeMap::new(),
            converged_agents,
        }
    }

    fn read(cluster: &str, seqs: &[u64], acked: u64, next: u64) -> StatusHistory {
        StatusHistory::Read {
            cluster: cluster.into(),
            seqs: seqs.to_vec(),
            outbox: Ok(Outbox {
                acked,
                next,
                depth: 0,
            }),
        }
    }

    #[test]
    fn converged_passes_with_its_time_and_fails_naming_who_was_behind() {
        let names = vec!["a".to_string(), "b".to_string()];
        let works = BTreeMap::from([("app".to_string(), applied(3, 3))]);
        let ok = Settled {
            converge_s: Some(1.5),
            last: Some(sample(vec![true, true], &[("app", 3, 2, 2)])),
        };
        let i = converged(&ok, &names, &works, 2, 30.0);
        assert_eq!(i.result, "passed");
        assert_eq!(
            i.detail,
            "all 2 agents Ready and at the latest generation 1.50s after the last fault"
        );

        let behind = Settled {
            converge_s: None,
            last: Some(sample(vec![true, false], &[("app", 3, 2, 1)])),
        };
        let i = converged(&behind, &names, &works, 2, 30.0);
        assert!(i.failed());
        assert_eq!(
            i.detail,
            "2 failure(s): b not Ready at the latest generation; \
             app generation 3: 2 targeted, 2 delivered, 1 applied"
        );

        // Not converged, yet nothing to blame at the last sample: the timeout itself fails.
        let silent = Settled {
            converge_s: None,
            last: None,
        };
        let i = converged(&silent, &names, &works, 2, 30.0);
        assert_eq!(i.detail, "1 failure(s): not converged within 30s");
    }

    #[test]
    fn status_exactly_once_catches_reordering_a_lost_ack_and_counted_gaps() {
        let good = [read("a", &[1, 2, 3], 3, 4), read("b", &[], 0, 1)];
        let i = status_exactly_once(&good, 0);
        assert_eq!(i.result, "passed");
        assert!(i.detail.starts_with("3 status entries,"), "{}", i.detail);

        let bad = [
            read("a", &[1, 3, 2], 2, 4),
            read("b", &[1, 2], 1, 2),
            StatusHistory::Unreadable {
                cluster: "c".into(),
                error: "timed out".into(),
            },
        ];
        let i = status_exactly_once(&bad, 1);
        assert!(i.failed());
        assert_eq!(
            i.detail,
            "5 failure(s): a: seq 2 after 3 (duplicate or reordered); \
             b: agent had status acknowledged through 1, hub's newest is 2; \
             b: hub holds a seq the agent never assigned; \
             c: status log unreadable: timed out; \
             tether_hub_status_gaps_total summed over hub lifetimes = 1"
        );
        assert_eq!(status_exactly_once(&good, 2).result, "failed");
    }

    #[test]
    fn acked_implies_held_fails_when_the_store_is_behind_the_recorded_delivery() {
        let works = |held: Result<Option<u64>, String>| {
            vec![WorkDeliveries {
                work: "app".into(),
                deliveries: Some(vec![Delivery {
                    cluster: "a".into(),
                    generation: 2,
                    held,
                }]),
            }]
        };
        assert_eq!(acked_implies_held(&works(Ok(Some(2)))).result, "passed");
        assert_eq!(acked_implies_held(&works(Ok(Some(3)))).result, "passed");
        let i = acked_implies_held(&works(Ok(None)));
        assert_eq!(
            i.detail,
            "1 failure(s): a: hub recorded app generation 2 delivered, agent store holds None"
        );
        let unknown = [WorkDeliveries {
            work: "gone".into(),
            deliveries: None,
        }];
        assert_eq!(
            acked_implies_held(&unknown).detail,
            "1 failure(s): gone: unknown to the hub"
        );
    }

    #[test]
    fn cluster_content_fails_on_stale_objects_and_on_holders_the_hub_did_not_place() {
        let holdings = |name: &str, value: &str| Holdings {
            name: name.into(),
            labels: Labels::new(),
            objects: vec![(
                "app-0".into(),
                serde_json::json!({"data": {"value": value}}),
            )],
        };
        let works = BTreeMap::from([("app".to_string(), applied(2, 2))]);
        let fine = Content {
            placed: BTreeMap::new(),
            clusters: vec![holdings("a", "app-v2")],
        };
        assert_eq!(cluster_content(&fine, &works).result, "passed");

        let wrong = Content {
            placed: BTreeMap::from([("app".to_string(), ["a".to_string()].into())]),
            clusters: vec![holdings("a", "app-v1"), holdings("b", "app-v2")],
        };
        assert_eq!(
            cluster_content(&wrong, &works).detail,
            "2 failure(s): a: app objects are not at app-v2; b: holds app but is not placed there"
        );
    }

    #[test]
    fn rollout_max_concurrency_judges_the_admission_peak_not_the_sampled_count() {
        assert_eq!(
            rollout_max_concurrency(&BTreeMap::new(), &[]).result,
            "not_checked"
        );
        let limits = BTreeMap::from([("app".to_string(), 2)]);
        let with = |in_flight, peak| {
            let mut s = sample(vec![], &[]);
            s.rollouts.insert("app".into(), (in_flight, peak));
            s
        };
        let i = rollout_max_concurrency(&limits, &[with(1, 1), with(2, 2)]);
        assert_eq!(i.result, "passed");
        assert_eq!(
            i.detail,
            "app: admission peak 2, most updating at a sample 2, limit 2"
        );
        // Between samples the hub admitted a third: only the peak it reports shows it.
        let i = rollout_max_concurrency(&limits, &[with(1, 3)]);
        assert_eq!(
            i.detail,
            "1 failure(s): app: 3 slots in use at an admission, maxConcurrency 2"
        );
    }

    #[test]
    fn singleton_never_twice_and_converge_after_heal_report_what_they_were_given() {
        assert_eq!(singleton_never_twice(&[], vec![]).result, "not_checked");
        let s = ["db".to_string()];
        assert_eq!(singleton_never_twice(&s, vec![]).result, "passed");
        assert!(singleton_never_twice(&s, vec!["db active on a, b at 1.00s".into()]).failed());

        let heal = |converge_s| HealRecord {
            t_s: 10.0,
            action: "link up".into(),
            agents: 1,
            converge_s,
        };
        assert!(converge_after_heal(&[heal(Some(50.0))], None).is_none());
        let i = converge_after_heal(&[heal(Some(5.0))], Some(10.0)).unwrap();
        assert_eq!(i.result, "passed");
        let i = converge_after_heal(&[heal(Some(5.0)), heal(None)], Some(10.0)).unwrap();
        assert_eq!(i.detail, "1 failure(s): link up at 10.0s: None");
    }
}
