//! The agent's disk fills up (issue 17): a delivery it cannot persist must be refused as
//! retryable (`Busy`), the heartbeat must say the store fails, and everything must work again
//! once space is freed, without a restart. Opening on a full disk waits instead of failing.
//!
//! The full disk is a real one: a small tmpfs, which needs root (the tests say so and pass
//! trivially when not root, as on a developer laptop; CI runs as root).

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tether_agent::desired::accept_update;
use tether_agent::reconcile::Signals;
use tether_agent::session::{conditions, STORE_CONDITION};
use tether_agent::Shutdown;
use tether_protocol::{bundle, ErrorCode, WorkUpdate};

/// A tmpfs of `bytes` mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let uid = std::process::Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs as root failed: {status}");
        Some(Tmpfs { path, _dir: dir })
    }

    /// Take every free byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 16 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
        // The last partial chunk may leave a few bytes: take them one at a time.
        while f.write_all(&[0]).and_then(|_| f.sync_all()).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A work whose stored form is about `kib` KiB of incompressible data, so that committing it
/// must grow the database file.
fn update(name: &str, generation: u64, kib: usize) -> WorkUpdate {
    let data: String = (0..kib * 1024 / 2)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let manifests = vec![json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"blob": data},
    })];
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

fn store_condition(store: &tether_store::Store) -> Option<tether_protocol::Condition> {
    conditions(store, &Signals::default())
        .into_iter()
        .find(|c| c.kind == STORE_CONDITION)
}

fn data_dir(fs: &Tmpfs) -> PathBuf {
    fs.path.join("agent")
}

#[test]
fn a_delivery_the_full_disk_cannot_hold_is_busy_reported_and_accepted_after_space_is_freed() {
    let Some(fs) = Tmpfs::mount(8 * 1024 * 1024) else {
        return;
    };
    let store = tether_agent::open_store(&data_dir(&fs)).unwrap();
    accept_update(&store, update("small", 1, 1), None).unwrap();
    assert_eq!(store_condition(&store), None);

    let filler = fs.fill();
    let mut refused = 0;
    for generation in 1..=3 {
        let err = accept_update(&store, update("big", generation, 512), None)
            .expect_err("a full disk cannot hold the work");
        assert_eq!(
            err.code(),
            ErrorCode::Busy,
            "a store failure is the agent's, not the hub's input: {err}"
        );
        refused += 1;
    }
    assert_eq!(refused, 3);
    let c = store_condition(&store).expect("the heartbeat says the store fails");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "StoreFailing")
    );
    assert!(!c.message.is_empty());

    std::fs::remove_file(&filler).unwrap();
    // The store reopens at most once per REOPEN_AFTER; deliveries succeed again without a
    // restart of the agent.
    let start = std::time::Instant::now();
    loop {
        match accept_update(&store, update("big", 4, 512), None) {
            Ok(ack) => {
                assert_eq!(ack.held.map(|h| h.generation), Some(4));
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Busy, "{e}");
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "still failing after space was freed: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(store_condition(&store), None, "the condition clears");
    assert!(store.failure().is_none());
}

#[tokio::test]
async fn opening_on_a_full_disk_waits_and_opens_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount(1024 * 1024) else {
        return;
    };
    let dir = data_dir(&fs);
    std::fs::create_dir_all(&dir).unwrap();
    let filler = fs.fill();
    // What `run` did before: fail at once, so that a supervisor restarts it into the same disk.
    let e = tether_agent::open_store(&dir).expect_err("no room for a database");
    assert!(
        matches!(&e, tether_agent::AgentError::Store(s) if tether_agent::error::store_retryable(s)),
        "{e}"
    );

    let (_stop, shutdown) = Shutdown::new();
    let opening = tokio::spawn({
        let dir = dir.clone();
        async move { tether_agent::open_store_waiting(&dir, Duration::from_millis(50), shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if opening.is_finished() {
        panic!("gave up on a full disk: {:?}", opening.await.unwrap().err());
    }
    std::fs::remove_file(&filler).unwrap();
    let store = tokio::time::timeout(Duration::from_secs(10), opening)
        .await
        .expect("opens once space is freed")
        .unwrap()
        .unwrap();
    assert!(store.failure().is_none());
}
