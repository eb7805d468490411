//! A compromised hub sends a bundle that is small on the wire and enormous once decoded (or
//! rendered). The agent must not build it, must not crash on it on every start once stored, and
//! must tell the hub, through the status outbox, that it holds the work but will not run it.

#[path = "support/bomb.rs"]
mod bomb;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use tether_agent::desired::accept_update;
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::Executor;
use tether_agent::outbox;
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, StatusAck, WorkPhase, WorkStatus, WorkUpdate};
use tether_store::agent::{DesiredWork, DESIRED};
use tether_store::Store;

fn update_from_raw(name: &str, generation: u64, raw: &[u8]) -> WorkUpdate {
    let packed = bundle::compress(raw).unwrap();
    WorkUpdate {
        name: name.into(),
        generation,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: None,
    }
}

fn good_update(name: &str, generation: u64) -> WorkUpdate {
    let manifests = vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"}, "data": {"k": "v"}})];
    let packed = bundle::pack(&manifests).unwrap();
    WorkUpdate {
        name: name.into(),
        generation,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: None,
    }
}

/// Statuses waiting in the outbox, then acknowledged (as the hub would) so the next check
/// sees only what is new.
fn drain(store: &Store) -> Vec<WorkStatus> {
    let Some(batch) = store.read(outbox::next_batch).unwrap() else {
        return Vec::new();
    };
    store
        .write(|tx| outbox::acknowledge(tx, batch.to_seq))
        .unwrap();
    let _ = StatusAck {
        through_seq: batch.to_seq,
    };
    batch.entries.into_iter().map(|e| e.status).collect()
}

fn quarantined_reason(s: &WorkStatus) -> Option<&str> {
    s.conditions
        .iter()
        .find(|c| c.kind == bundle::QUARANTINED_CONDITION && c.status == "True")
        .map(|c| c.reason.as_str())
}

fn agent<E: Executor>(executor: Arc<E>) -> (tempfile::TempDir, Arc<Store>, Reconciler<E>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    let reconciler = Reconciler::new(
        store.clone(),
        executor,
        Signals::default(),
        Duration::from_secs(3600),
    );
    (dir, store, reconciler)
}

#[tokio::test]
async fn a_bundle_bomb_is_quarantined_acknowledged_and_reported_once() {
    let cluster = Arc::new(MemoryExecutor::new());
    let (_dir, store, reconciler) = agent(cluster.clone());
    // 2 million empty lists: 2 MB of CBOR, a few KB compressed, 64 MB as values.
    let raw = bomb::config_map_around("bomb", &bomb::empty_lists(2_000_000));
    let update = update_from_raw("app", 1, &raw);
    let hash = update.hash.clone();
    assert!(update.bundle.as_ref().unwrap().len() < 16 * 1024);

    let ack = accept_update(&store, update, None).expect("held, not refused");
    let held = ack.held.expect("acknowledged as held");
    assert_eq!((held.generation, held.hash.as_str()), (1, hash.as_str()));
    let stored = store.read(|tx| tx.get(&DESIRED, "app")).unwrap().unwrap();
    assert!(stored.manifests.is_empty(), "the bomb was stored");

    reconciler.pass().await.unwrap();
    assert!(cluster.objects().is_empty(), "the bomb was applied");
    let statuses = drain(&store);
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].phase, WorkPhase::Failed);
    assert_eq!(statuses[0].hash, hash);
    assert_eq!(quarantined_reason(&statuses[0]), Some("BundleOverLimits"));
    // Reported once, not on every pass.
    assert_eq!(reconciler.pass().await.unwrap(), 0);
    assert!(drain(&store).is_empty());

    // The hub repeats the generation without the bundle: still quarantined, not "missing".
    let mut again = good_update("app", 2);
    again.hash = hash.clone();
    again.bundle = None;
    accept_update(&store, again, None).expect("same content, new generation");
    reconciler.pass().await.unwrap();
    let statuses = drain(&store);
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].generation, 2);
    assert_eq!(quarantined_reason(&statuses[0]), Some("BundleOverLimits"));

    // Fixed content lifts the quarantine.
    accept_update(&store, good_update("app", 3), None).unwrap();
    reconciler.pass().await.unwrap();
    assert_eq!(cluster.objects().len(), 1);
    let statuses = drain(&store);
    assert_eq!(statuses.last().map(|s| s.phase), Some(WorkPhase::Available));
    assert_eq!(quarantined_reason(&statuses[0]), None);
}

#[tokio::test]
async fn a_bomb_stored_by_an_older_agent_is_quarantined_instead_of_loaded() {
    let cluster = Arc::new(MemoryExecutor::new());
    let (_dir, store, reconciler) = agent(cluster.clone());
    accept_update(&store, good_update("fine", 1), None).unwrap();
    // What an agent without decoding limits stored: over the value limit.
    let data: Vec<serde_json::Value> = vec![json!([]); bundle::MAX_BUNDLE_ELEMENTS + 1];
    let record = DesiredWork {
        name: "old".into(),
        generation: 4,
        hash: "sha256:0123".into(),
        force_conflicts: false,
        manifests: vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "default"}, "data": data})],
        removal: None,
        fence_after_ms: None,
        fenced: false,
    };
    store.write(|tx| tx.put(&DESIRED, "old", &record)).unwrap();
    drop(record);

    reconciler.pass().await.unwrap();
    let objects = cluster.objects();
    assert_eq!(
        objects.keys().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["settings"],
        "only the healthy work runs"
    );
    let statuses = drain(&store);
    let old = statuses
        .iter()
        .find(|s| s.work == "old")
        .expect("status of old");
    assert_eq!(old.phase, WorkPhase::Failed);
    assert_eq!(old.generation, 4);
    assert_eq!(quarantined_reason(old), Some("StoredRecordUnreadable"));
    // The record no longer holds the bomb, so later reads are cheap; the hub still sees it held.
    let stored = store.read(|tx| tx.get(&DESIRED, "old")).unwrap().unwrap();
    assert!(stored.manifests.is_empty());
    let inventory = store.read(tether_agent::desired::inventory).unwrap();
    assert_eq!(inventory.works["old"].hash, "sha256:0123");
    assert_eq!(reconciler.pass().await.unwrap(), 0);
}

#[tokio::test]
async fn manifests_that_render_to_too_much_yaml_are_quarantined_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("manifests");
    let exec = Arc::new(DirExecutor::new(&folder).unwrap());
    let (_d, store, reconciler) = agent(exec);
    // 96 levels and 450 000 zeros: within the value and depth limits, 450 KB of CBOR, and
    // more than 64 MiB of YAML (every zero is a line indented by two spaces per level).
    let raw = bomb::config_map_around("deep", &bomb::deep_zeros(96, 450_000));
    accept_update(&store, update_from_raw("deep", 1, &raw), None).expect("held");
    reconciler.pass().await.unwrap();
    assert!(
        std::fs::read_dir(&folder).unwrap().next().is_none(),
        "something was written"
    );
    let statuses = drain(&store);
    assert_eq!(statuses.len(), 1);
    assert_eq!(quarantined_reason(&statuses[0]), Some("RenderTooLarge"));
}
