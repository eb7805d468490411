//! A singleton delivery that was held up in the network (sent before the hub moved the work,
//! retransmitted after a partition healed) must not start just because contact came back
//! with it: the hub may be running the work elsewhere by then.

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::desired::accept_update;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::outbox;
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, WorkPhase, WorkUpdate};
use tether_store::Store;

fn update(generation: u64, replicas: u64) -> WorkUpdate {
    let manifests = vec![json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "controller", "namespace": "default"},
        "spec": {"replicas": replicas},
    })];
    let packed = bundle::pack(&manifests).unwrap();
    WorkUpdate {
        name: "controller".into(),
        generation,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: Some(1_000),
    }
}

struct Agent {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    cluster: Arc<MemoryExecutor>,
    signals: Signals,
    reconciler: Reconciler<MemoryExecutor>,
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    let cluster = Arc::new(MemoryExecutor::new());
    let signals = Signals::default();
    let reconciler = Reconciler::new(
        store.clone(),
        cluster.clone(),
        signals.clone(),
        Duration::from_secs(3600),
    );
    Agent {
        _dir: dir,
        store,
        cluster,
        signals,
        reconciler,
    }
}

/// The agent's last acknowledged heartbeat was sent 3 s ago (fenceAfter is 1 s).
fn stale(a: &Agent) -> Option<Duration> {
    *a.signals.last_contact.lock().unwrap() = Some(Instant::now() - Duration::from_secs(3));
    a.signals.since_contact(Instant::now())
}

#[tokio::test]
async fn a_late_delivery_stays_down_even_when_contact_returns_before_the_pass() {
    let a = agent();
    let since = stale(&a);
    accept_update(&a.store, update(1, 1), since).unwrap();
    // The heartbeat acknowledged right after it makes contact fresh again.
    a.signals.contact(Instant::now());
    a.reconciler.pass().await.unwrap();
    assert!(a.cluster.objects().is_empty(), "the late copy started");
}

#[tokio::test]
async fn a_late_delivery_over_a_running_copy_takes_that_copy_down() {
    let a = agent();
    a.signals.contact(Instant::now());
    let since = a.signals.since_contact(Instant::now());
    accept_update(&a.store, update(1, 1), since).unwrap();
    a.reconciler.pass().await.unwrap();
    assert_eq!(a.cluster.objects().len(), 1, "a timely delivery runs");

    let since = stale(&a);
    accept_update(&a.store, update(2, 2), since).unwrap();
    a.signals.contact(Instant::now());
    a.reconciler.pass().await.unwrap();
    assert!(a.cluster.objects().is_empty(), "the copy kept running");
    let last = a
        .store
        .read(outbox::next_batch)
        .unwrap()
        .and_then(|b| b.entries.last().cloned())
        .unwrap();
    assert_eq!(last.status.phase, WorkPhase::Fenced);
}
