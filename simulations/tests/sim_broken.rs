//! A deliberately broken agent ("acks before committing") is caught by a scenario: the agent is
//! killed right after the hub records the delivery. With the fault-injection switch off the same
//! scenario passes every invariant.

use std::sync::atomic::Ordering;
use tether_agent::desired::ACK_BEFORE_COMMIT;
use tether_sim::scenario::Scenario;
use tether_sim::sim::{run, Report, RunConfig};

const SCENARIO: &str = r#"
name = "kill-after-delivery"
duration_s = 8
settle_s = 12

[fleet]
agents = 3
heartbeat_ms = 300
offline_grace_ms = 2000
reconcile_ms = 300

[[events]]
kind = "apply"
at_s = 0.5
work = "app"
objects = 20

[[events]]
kind = "agent_kill"
at_s = 0.5
for_s = 2
after_delivery = "app"
select = { agents = [0] }

[[events]]
kind = "apply"
at_s = 4
work = "app"
objects = 20
"#;

async fn run_once() -> Report {
    let s = Scenario::parse(SCENARIO).unwrap();
    run(
        s,
        RunConfig {
            seed: Some(1),
            short: false,
            out: None,
            verbose: false,
        },
    )
    .await
    .unwrap()
}

fn result<'a>(r: &'a Report, name: &str) -> &'a str {
    &r.invariants
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no invariant {name}"))
        .result
}

// One test so that the process-wide switch is never flipped under another run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_before_commit_is_caught() {
    ACK_BEFORE_COMMIT.store(false, Ordering::SeqCst);
    let good = run_once().await;
    assert!(
        good.passed,
        "correct agent failed: {}",
        tether_sim::sim::summary(&good)
    );
    assert!(good
        .events
        .iter()
        .any(|e| e.note.contains("after delivery")));

    ACK_BEFORE_COMMIT.store(true, Ordering::SeqCst);
    let bad = run_once().await;
    ACK_BEFORE_COMMIT.store(false, Ordering::SeqCst);
    let text = tether_sim::sim::summary(&bad);
    assert!(!bad.passed, "broken agent passed: {text}");
    assert_eq!(result(&bad, "converged"), "failed", "{text}");
    assert_eq!(result(&bad, "acked_implies_held"), "failed", "{text}");
}
