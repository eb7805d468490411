//! A reconcile pass handles what changed first: a new delivery is applied (and its status
//! announced) before the re-check of every unchanged work the agent holds, so its latency
//! does not grow with everything else on the cluster.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_agent::desired::accept_update;
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::{ApplyReport, ExecError, Executor, Managed};
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, WorkUpdate};
use tether_store::agent::DesiredWork;
use tether_store::Store;

/// The memory executor, recording the order of applies.
struct Recording {
    cluster: MemoryExecutor,
    order: Arc<Mutex<Vec<String>>>,
}

impl Executor for Recording {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        self.order.lock().unwrap().push(work.name.clone());
        self.cluster.apply(work, previous).await
    }
    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        self.cluster.remove(work, managed, orphan).await
    }
    fn describe(&self) -> String {
        "memory, recording".into()
    }
}

fn deliver(store: &Store, name: &str, generation: u64, value: &str) {
    let manifests = vec![json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"v": value},
    })];
    let packed = bundle::pack(&manifests).unwrap();
    accept_update(
        store,
        WorkUpdate {
            name: name.into(),
            generation,
            hash: packed.hash,
            force_conflicts: false,
            bundle: Some(packed.compressed),
            base: None,
            fence_after_ms: None,
        },
        None,
    )
    .unwrap();
}

#[tokio::test]
async fn a_new_delivery_goes_before_the_re_check_of_unchanged_works() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    for name in ["a", "b", "c", "d"] {
        deliver(&store, name, 1, "v1");
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(Recording {
            cluster: MemoryExecutor::new(),
            order: order.clone(),
        }),
        Signals::default(),
        Duration::from_secs(3600),
    );
    reconciler.pass().await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "d"]);
    order.lock().unwrap().clear();

    deliver(&store, "c", 2, "v2");
    reconciler.pass().await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["c", "a", "b", "d"]);
}
