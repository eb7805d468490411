//! The hub withdraws a work while the agent is applying it: the removal wins, and it must
//! remove what that very apply created (it used to know only the previous inventory, and the
//! new objects stayed on the cluster for good).

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tether_agent::desired::{accept_removal, accept_update};
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::{ApplyReport, ExecError, Executor, Managed};
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, WorkRemove, WorkUpdate};
use tether_store::agent::DesiredWork;
use tether_store::Store;

/// Applies like the memory executor, and the hub's removal lands while it does.
struct WithdrawnDuringApply {
    cluster: MemoryExecutor,
    store: Arc<Store>,
}

impl Executor for WithdrawnDuringApply {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        let report = self.cluster.apply(work, previous).await;
        accept_removal(
            &self.store,
            WorkRemove {
                name: work.name.clone(),
                orphan: false,
            },
        )
        .unwrap();
        report
    }

    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        self.cluster.remove(work, managed, orphan).await
    }

    fn describe(&self) -> String {
        "memory, withdrawn during apply".into()
    }
}

#[tokio::test]
async fn a_removal_that_lands_during_an_apply_removes_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    let cluster = MemoryExecutor::new();
    let manifests = vec![json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
    })];
    let packed = bundle::pack(&manifests).unwrap();
    let update = WorkUpdate {
        name: "app".into(),
        generation: 1,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: None,
    };
    accept_update(&store, update, None).unwrap();
    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(WithdrawnDuringApply {
            cluster: cluster.clone(),
            store: store.clone(),
        }),
        Signals::default(),
        Duration::from_secs(3600),
    );
    reconciler.pass().await.unwrap();
    assert_eq!(cluster.objects().len(), 1, "the apply ran");
    reconciler.pass().await.unwrap();
    assert!(
        cluster.objects().is_empty(),
        "left behind: {:?}",
        cluster.objects().keys().collect::<Vec<_>>()
    );
}
