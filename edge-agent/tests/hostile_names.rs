//! A compromised hub chooses work names. The dir executor builds file names from them, so a
//! name like `x/../../victim` used to write (and, on removal, delete) `victim.yaml` two levels
//! above the executor's folder whenever a `tether-x` subdirectory existed there.

use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_agent::desired::{accept_removal, accept_update};
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::Executor;
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::{bundle, WorkRemove, WorkUpdate};
use tether_store::agent::{DesiredWork, DESIRED};
use tether_store::Store;

const HOSTILE: &[&str] = &[
    "x/../../victim",
    "../victim",
    "/tmp/tether-hostile-name-test",
    "",
    ".",
    "..",
    "a\nb",
    "web\n---\nkind: Secret",
    "UPPER",
    "a_b",
];

fn update(name: &str) -> WorkUpdate {
    let manifests = vec![json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hostile", "namespace": "default"},
    })];
    let packed = bundle::pack(&manifests).unwrap();
    WorkUpdate {
        name: name.into(),
        generation: 1,
        hash: packed.hash,
        force_conflicts: false,
        bundle: Some(packed.compressed),
        base: None,
        fence_after_ms: None,
    }
}

/// `root/manifests` is the executor's folder; `root/victim.yaml` is outside it.
struct Layout {
    root: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("manifests/tether-x")).unwrap();
        std::fs::write(root.path().join("victim.yaml"), "precious\n").unwrap();
        Layout { root }
    }
    fn folder(&self) -> std::path::PathBuf {
        self.root.path().join("manifests")
    }
    fn assert_untouched(&self) {
        let victim = std::fs::read_to_string(self.root.path().join("victim.yaml"));
        assert_eq!(victim.ok().as_deref(), Some("precious\n"), "victim.yaml");
        assert!(!Path::new("/tmp/tether-hostile-name-test.yaml").exists());
        let mut inside: Vec<String> = walk(&self.folder());
        inside.sort();
        assert_eq!(inside, vec!["tether-x".to_string()], "folder content");
        let mut top: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, vec!["agent.redb", "manifests", "victim.yaml"]);
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            for sub in walk(&e.path()) {
                out.push(format!("{name}/{sub}"));
            }
            if std::fs::read_dir(e.path()).unwrap().next().is_none() {
                out.push(name);
            }
        } else {
            out.push(name);
        }
    }
    out
}

#[tokio::test]
async fn hostile_work_names_never_reach_the_store_or_the_folder() {
    let layout = Layout::new();
    let store = Arc::new(Store::open(layout.root.path().join("agent.redb")).unwrap());
    let executor = Arc::new(DirExecutor::new(layout.folder()).unwrap());
    let reconciler = Reconciler::new(
        store.clone(),
        executor,
        Signals::default(),
        Duration::from_secs(3600),
    );
    for name in HOSTILE {
        let refused = accept_update(&store, update(name), None);
        assert!(refused.is_err(), "update {name:?} was accepted");
        reconciler.pass().await.unwrap();
        let refused = accept_removal(
            &store,
            WorkRemove {
                name: name.to_string(),
                orphan: false,
            },
        );
        assert!(refused.is_err(), "removal {name:?} was accepted");
        reconciler.pass().await.unwrap();
    }
    let held = store.read(|tx| tx.list(&DESIRED)).unwrap();
    assert!(
        held.is_empty(),
        "stored: {:?}",
        held.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    layout.assert_untouched();
}

/// A record written by an older agent (or by anything that skipped validation) must not make
/// the dir executor leave its folder either.
#[tokio::test]
async fn the_dir_executor_refuses_names_that_are_not_a_single_file_in_its_folder() {
    let layout = Layout::new();
    // The store file lives in root too, so the layout check finds what it expects.
    let _store = Store::open(layout.root.path().join("agent.redb")).unwrap();
    let exec = DirExecutor::new(layout.folder()).unwrap();
    for name in HOSTILE {
        let work = DesiredWork {
            name: name.to_string(),
            generation: 1,
            hash: "sha256:00".into(),
            force_conflicts: false,
            manifests: vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "hostile"}})],
            removal: None,
            fence_after_ms: None,
            fenced: false,
        };
        assert!(
            exec.apply(&work, &Default::default()).await.is_err(),
            "applied {name:?}"
        );
        assert!(
            exec.remove(name, &Default::default(), false).await.is_err(),
            "removed {name:?}"
        );
    }
    layout.assert_untouched();
}

/// Something that is not a regular file where the work's file goes (a FIFO here) must not
/// block the reconciler: reading a FIFO waits for a writer that never comes.
#[test]
fn a_fifo_in_place_of_the_file_does_not_hang_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("tether-web.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        panic!("mkfifo is needed for this test");
    }
    let folder = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let exec = DirExecutor::new(folder).unwrap();
        let work = DesiredWork {
            name: "web".into(),
            generation: 1,
            hash: "sha256:00".into(),
            force_conflicts: false,
            manifests: vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "web"}})],
            removal: None,
            fence_after_ms: None,
            fenced: false,
        };
        let _ = tx.send(
            rt.block_on(exec.apply(&work, &Default::default()))
                .map(|_| ()),
        );
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("apply hung on a FIFO");
    assert!(outcome.is_ok(), "{outcome:?}");
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(
        meta.is_file(),
        "the FIFO was not replaced by the work's file"
    );
}

/// Object names end up in API paths (`.../configmaps/NAME`); Kubernetes requires them to be
/// path segment names. A manifest that is not is quarantined, never sent.
#[tokio::test]
async fn manifests_whose_names_are_not_path_segments_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("agent.redb")).unwrap());
    let cluster = Arc::new(tether_agent::executor::memory::MemoryExecutor::new());
    let reconciler = Reconciler::new(
        store.clone(),
        cluster.clone(),
        Signals::default(),
        Duration::from_secs(3600),
    );
    for (i, (name, namespace)) in [
        ("../../secrets/x", "default"),
        ("..", "default"),
        ("a%2Fb", "default"),
        ("ok", "../kube-system"),
    ]
    .into_iter()
    .enumerate()
    {
        let manifests = vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}})];
        let packed = bundle::pack(&manifests).unwrap();
        let work = format!("w{i}");
        accept_update(
            &store,
            WorkUpdate {
                name: work.clone(),
                generation: 1,
                hash: packed.hash,
                force_conflicts: false,
                bundle: Some(packed.compressed),
                base: None,
                fence_after_ms: None,
            },
            None,
        )
        .expect("held (quarantined)");
        reconciler.pass().await.unwrap();
        assert!(
            cluster.objects().is_empty(),
            "{name:?} in {namespace:?} was applied"
        );
        let stored = store.read(|tx| tx.get(&DESIRED, &work)).unwrap().unwrap();
        assert!(stored.manifests.is_empty(), "{name:?} stored");
    }
}
