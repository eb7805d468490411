//! The hub after a lost, damaged or full disk: it refuses to start on a missing or empty
//! database instead of starting an empty hub, refuses a damaged one with a clear error, and
//! says on /healthz while its store fails, recovering once space is freed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tether_protocol::Labels;
use tether_sim::fleet::LocalHub;

/// Whether a prerequisite of a test is here. In CI (`CI` set, as `.ci/run` is run) a missing
/// one fails the test; on a developer's machine the test says why it did not run.
fn available(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing; .ci/run installs Debian's faketime and runs as root"
        );
        eprintln!("SKIPPED: {what} is not available here (CI runs this test)");
    }
    present
}

async fn start_err(dir: &Path) -> String {
    let mut cfg = fast_config(&dir.join("hub"));
    cfg.data_dir = tether_hub::config::DataDir::new(dir.join("hub"));
    match tether_hub::start(cfg).await {
        Ok(_) => panic!("the hub started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_missing_empty_or_damaged_database() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path()).await;
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    assert!(!token.is_empty());
    hub.stop().await;
    let db = dir.path().join("hub/hub.redb");
    let good = std::fs::read(&db).unwrap();

    std::fs::remove_file(&db).unwrap();
    let err = start_err(dir.path()).await;
    assert!(
        err.contains("does not exist") && err.contains("backup"),
        "{err}"
    );
    assert!(!db.exists(), "serve created a database");

    std::fs::write(&db, b"").unwrap();
    let err = start_err(dir.path()).await;
    assert!(err.contains("is empty"), "{err}");

    // Every page after the header overwritten: damaged, named, never a panic.
    let mut bad = good.clone();
    let mut x: u32 = 0x9e37_79b9;
    for b in bad.iter_mut().skip(4096) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&db, &bad).unwrap();
    let err = start_err(dir.path()).await;
    assert!(err.contains("hub.redb"), "{err}");

    std::fs::write(&db, &good).unwrap();
    let again = LocalHub::start(
        &dir.path().join("hub"),
        fast_config(&dir.path().join("hub")),
    )
    .await
    .unwrap();
    again.admin().unwrap().clusters().await.unwrap();
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_on_healthz_and_the_hub_recovers_when_space_is_freed() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), "16m");
    if !available("a tmpfs mount (root)", disk.is_some()) {
        return;
    }
    let Some(disk) = disk else { return };
    let hub = hub(&disk.0).await;
    let admin = hub.admin().unwrap();
    admin
        .apply_work(&config_work("before", everywhere(), &["a"], "1"))
        .await
        .unwrap();
    assert_eq!(admin.get_text("/healthz").await.unwrap(), "ok\n");

    let filler = fill(&disk.0);
    let mut refused = None;
    for i in 0..50 {
        // Big enough values that the commit needs new pages.
        let value = "x".repeat(200_000);
        match admin
            .apply_work(&config_work(
                &format!("full-{i}"),
                everywhere(),
                &["a"],
                &value,
            ))
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                refused = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let refused = refused.expect("no write failed on a full disk");
    assert!(!refused.contains("panic"), "{refused}");
    assert!(
        refused.contains("503"),
        "a full disk is retryable: {refused}"
    );
    let health = admin.get_text("/healthz").await.unwrap_err().to_string();
    assert!(health.contains("store failing"), "{health}");
    let metrics = admin.get_text("/metrics").await.unwrap();
    assert_eq!(
        tether_sim::fleet::metric(&metrics, "tether_hub_store_failing"),
        1.0
    );

    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if admin
            .apply_work(&config_work("after", everywhere(), &["a"], "2"))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "writes still fail after space was freed");
    assert_eq!(admin.get_text("/healthz").await.unwrap(), "ok\n");
    let names: Vec<String> = admin
        .works()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert!(
        names.contains(&"before".to_string()) && names.contains(&"after".to_string()),
        "{names:?}"
    );
    drop(hub);
}

/// The only recovery from a lost agent store: wipe it, detach, re-join under the same name.
/// The new agent's statuses start again at 1; the old registration's cursor must not make the
/// hub drop them as duplicates (it did, and the agent resent ~890 times a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoined_cluster_reports_status_from_its_new_store() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Labels::new()).await.unwrap();
    let a = agent(&hub, dir.path(), "phoenix", &token);
    for i in 0..20 {
        admin
            .apply_work(&config_work(
                &format!("w{i}"),
                only(&["phoenix"]),
                &["a"],
                "1",
            ))
            .await
            .unwrap();
    }
    for i in 0..20 {
        wait_applied(&admin, &format!("w{i}"), 1, 1).await;
    }
    a.stop().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("agents/phoenix")).unwrap();
    std::fs::remove_dir_all(manifests_dir(dir.path(), "phoenix")).unwrap();
    admin.detach("phoenix").await.unwrap();
    let before = tether_sim::fleet::metric(
        &admin.get_text("/metrics").await.unwrap(),
        "tether_hub_status_duplicates_total",
    );
    let a = agent(&hub, dir.path(), "phoenix", &token);
    for i in 0..20 {
        wait_applied(&admin, &format!("w{i}"), 1, 1).await;
    }
    assert!(manifests_dir(dir.path(), "phoenix")
        .join("tether-w0.yaml")
        .exists());
    let after = tether_sim::fleet::metric(
        &admin.get_text("/metrics").await.unwrap(),
        "tether_hub_status_duplicates_total",
    );
    assert!(
        after - before < 5.0,
        "the new registration's statuses were taken as duplicates ({before} -> {after})"
    );
    a.stop().await.unwrap();
}

/// A hub restored from an older backup under a running fleet: agents keep the work the
/// restored hub does not know, statuses flow again without resend loops, the operator is told,
/// and the fleet takes new works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_older_backup_under_a_running_fleet_loses_no_work() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(3, true, Labels::new()).await.unwrap();
    let stolen = agent(&hub, dir.path(), "stolen", &token);
    let agents: Vec<_> = ["north", "south"]
        .iter()
        .map(|n| agent(&hub, dir.path(), n, &token))
        .collect();
    admin
        .apply_work(&config_work("old", everywhere(), &["a"], "1"))
        .await
        .unwrap();
    wait_applied(&admin, "old", 1, 3).await;
    let backup = dir.path().join("hub-backup.redb");
    let info = admin.backup(&backup.display().to_string()).await.unwrap();
    assert!(info.rows > 0 && backup.exists(), "{info:?}");
    assert!(
        admin.backup(&backup.display().to_string()).await.is_err(),
        "a backup overwrote a file"
    );
    // After the backup: a work the restored hub will not know.
    admin
        .apply_work(&config_work("newer", everywhere(), &["a"], "1"))
        .await
        .unwrap();
    wait_applied(&admin, "newer", 1, 3).await;
    // Denied after the backup: restoring must not let it back in.
    admin.deny("stolen", "laptop stolen").await.unwrap();
    let _ = stolen.stop().await;

    hub.stop().await;
    let db = dir.path().join("hub/hub.redb");
    let report = tether_hub::backup::restore(&db, &backup, tether_hub::util::now_ms()).unwrap();
    assert_eq!((report.clusters, report.works), (3, 1));
    assert_eq!(report.denials_kept, 1, "{report:?}");
    assert!(report.revocations_kept >= 1, "{report:?}");
    assert!(report.replaced.is_some_and(|p| p.exists()));
    hub.restart().await.unwrap();
    let admin = hub.admin().unwrap();
    tether_sim::fleet::wait_for(
        &admin,
        WAIT,
        "both Ready",
        tether_sim::fleet::all_in_state(&names(&["north", "south"]), "Ready"),
    )
    .await
    .unwrap();
    admin
        .apply_work(&config_work("after", everywhere(), &["a"], "1"))
        .await
        .unwrap();
    wait_applied(&admin, "after", 1, 2).await;
    wait_applied(&admin, "old", 1, 2).await;
    assert_eq!(
        admin.cluster("stolen").await.unwrap().state,
        tether_hub::api::ClusterState::Denied
    );
    for n in ["north", "south"] {
        assert!(
            manifests_dir(dir.path(), n)
                .join("tether-newer.yaml")
                .exists(),
            "{n} lost a work the restored hub does not know"
        );
    }
    let (events, _) = admin
        .audit_search(
            &tether_hub::api::AuditFilter {
                kind: Some("restored_from_backup".into()),
                ..Default::default()
            },
            None,
            5,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    // No resend loop: a few seconds of a quiet fleet add no duplicate statuses.
    let dups = |t: &str| tether_sim::fleet::metric(t, "tether_hub_status_duplicates_total");
    let before = dups(&admin.get_text("/metrics").await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = dups(&admin.get_text("/metrics").await.unwrap());
    assert!(after - before < 5.0, "duplicates {before} -> {after}");
    for a in agents {
        a.stop().await.unwrap();
    }
}

/// An agent whose clock is 30 minutes slow (libfaketime) joins a hub initialised a moment ago
/// and applies a work: the hub's certificates start an hour in the past. With the earlier 5
/// minutes the agent saw the hub's certificate as not yet valid and blamed the CA fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_slow_clock_joins_and_applies() {
    init_logs();
    if !available(
        "faketime",
        Command::new("faketime").arg("--help").output().is_ok(),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Labels::new()).await.unwrap();
    let bin = agent_binary();
    let _agent = AgentProcess::spawn_under(
        &[
            "env",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "faketime",
            "-f",
            "-30m",
        ],
        &bin,
        &hub,
        dir.path(),
        "slowpoke",
        &token,
    );
    admin
        .apply_work(&config_work("tick", only(&["slowpoke"]), &["a"], "1"))
        .await
        .unwrap();
    let log = dir.path().join("slowpoke.log");
    let start = std::time::Instant::now();
    loop {
        if let Ok(d) = admin.work("tick").await {
            if d.summary.applied == 1 {
                break;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the slow agent did not apply: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The skew is reported before it can break anything.
    let mut c = admin.cluster("slowpoke").await.unwrap();
    for _ in 0..100 {
        if c.conditions.iter().any(|k| k.kind == "ClockSkew") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c = admin.cluster("slowpoke").await.unwrap();
    }
    assert_eq!(c.state, tether_hub::api::ClusterState::Ready);
    let skew = c
        .conditions
        .iter()
        .find(|k| k.kind == "ClockSkew")
        .unwrap_or_else(|| panic!("no ClockSkew condition: {:?}", c.conditions));
    assert!(
        skew.status == "True" && skew.message.contains("behind"),
        "{skew:?}"
    );
}
