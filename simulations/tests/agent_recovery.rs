//! Issue 17, agent side: an agent must never look fine while it is not. A panicking executor
//! or reconciler, a full disk and a damaged database each used to leave an agent that stayed
//! Ready (applying nothing), refused deliveries for good, or crash-looped.

mod common;
mod peer;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_agent::executor::memory::MemoryExecutor;
use tether_agent::executor::{ApplyReport, ExecError, Executor, Managed};
use tether_agent::{RunOptions, Shutdown};
use tether_hub::AdminClient;
use tether_protocol::Condition;
use tether_sim::fleet::{all_in_state, wait_for};
use tether_store::agent::DesiredWork;

/// The memory executor, made to panic while `broken` holds: in `apply` and, if `facts_too`,
/// in `cluster_facts` (which the reconcile loop calls outside any apply).
#[derive(Clone)]
struct Panicky {
    cluster: MemoryExecutor,
    broken: Arc<AtomicBool>,
    facts_too: bool,
    panics: Arc<AtomicU64>,
}

impl Panicky {
    fn new(facts_too: bool) -> Self {
        Self {
            cluster: MemoryExecutor::new(),
            broken: Arc::new(AtomicBool::new(true)),
            facts_too,
            panics: Arc::new(AtomicU64::new(0)),
        }
    }

    fn maybe_panic(&self, what: &str) {
        if self.broken.load(Ordering::SeqCst) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("injected panic in {what}");
        }
    }
}

impl Executor for Panicky {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        self.maybe_panic("apply");
        self.cluster.apply(work, previous).await
    }

    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        self.cluster.remove(work, managed, orphan).await
    }

    fn describe(&self) -> String {
        "memory, panicking on demand".into()
    }

    async fn cluster_facts(&self) -> (Option<String>, Option<u32>) {
        if self.facts_too {
            self.maybe_panic("cluster_facts");
        }
        (None, None)
    }
}

fn run_options(data_dir: &Path) -> RunOptions {
    let mut o = RunOptions::new(data_dir);
    o.backoff_base = Duration::from_millis(100);
    o.backoff_cap = Duration::from_secs(1);
    o.reconcile_interval = Duration::from_millis(300);
    o
}

/// An agent running `tether_agent::run` with any executor on an already joined data dir.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tether_agent::AgentError>>,
}

fn start<E: Executor>(data_dir: &Path, executor: E) -> Running {
    let (stop, shutdown) = Shutdown::new();
    let opts = run_options(data_dir);
    let executor = Arc::new(executor);
    let task = tokio::spawn(async move { tether_agent::run(&opts, executor, shutdown).await });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("agent stops")
            .expect("agent task did not panic");
        r.expect("agent ended cleanly");
    }
}

async fn wait_condition(admin: &AdminClient, what: &str, pred: impl Fn(&[Condition]) -> bool) {
    let start = Instant::now();
    loop {
        let c = admin.cluster("a").await.map(|c| c.conditions);
        if c.as_ref().is_ok_and(|c| pred(c)) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(c: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    c.iter().find(|c| c.kind == kind)
}

/// Join cluster `a` (an agent that is then stopped) and return its data dir.
async fn joined(hub: &tether_sim::fleet::LocalHub, dir: &Path) -> PathBuf {
    let token = hub.token(1, true, Default::default()).await.unwrap();
    peer::joined_identity(hub, dir, "a", &token).await;
    dir.join("agents").join("a")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_loop_that_panics_is_restarted_reported_and_applies_once_it_stops() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let admin = hub.admin().unwrap();
    let data_dir = joined(&hub, dir).await;
    let exec = Panicky::new(true);
    let agent = start(&data_dir, exec.clone());

    // The loop panics outside any apply: the agent must say so instead of staying Ready.
    wait_condition(&admin, "AgentReady False (reconciler)", |c| {
        find(c, "AgentReady").is_some_and(|r| {
            r.status == "False" && r.reason == "TaskFailed" && r.message.contains("reconciler")
        })
    })
    .await;
    let g = admin
        .apply_work(&config_work("w", only(&["a"]), &["k"], "1"))
        .await
        .unwrap()
        .generation;
    // Restarted with backoff, not in a tight loop (that it is restarted at all shows below:
    // the work is applied once the executor stops panicking).
    let before = exec.panics.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = exec.panics.load(Ordering::SeqCst) - before;
    assert!(during <= 40, "{during} restarts in 2 s");
    assert!(exec.cluster.objects().is_empty());

    exec.broken.store(false, Ordering::SeqCst);
    wait_applied(&admin, "w", g, 1).await;
    assert_eq!(exec.cluster.objects().len(), 1);
    wait_condition(&admin, "AgentReady True again", |c| {
        find(c, "AgentReady").is_some_and(|r| r.status == "True")
    })
    .await;
    assert!(!agent.task.is_finished());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_panics_fails_that_work_and_is_retried_until_it_applies() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let admin = hub.admin().unwrap();
    let data_dir = joined(&hub, dir).await;
    let exec = Panicky::new(false);
    let agent = start(&data_dir, exec.clone());
    wait_for(
        &admin,
        WAIT,
        "a Ready",
        all_in_state(&names(&["a"]), "Ready"),
    )
    .await
    .unwrap();
    let g = admin
        .apply_work(&config_work("w", only(&["a"]), &["k"], "1"))
        .await
        .unwrap()
        .generation;
    // The panic becomes this work's failed status, on the hub: not silence.
    let start = Instant::now();
    loop {
        let d = admin.work("w").await.unwrap();
        let row = d.clusters.iter().find(|c| c.cluster == "a");
        if row.is_some_and(|r| {
            r.phase == Some(tether_protocol::WorkPhase::Failed) && r.message.contains("panicked")
        }) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no failed status for the panic: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec.broken.store(false, Ordering::SeqCst);
    wait_applied(&admin, "w", g, 1).await;
    assert_eq!(exec.cluster.objects().len(), 1);
    agent.stop().await;
}

/// A tmpfs of `bytes` on a fresh dir (needs root), unmounted on drop.
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

    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 16 * 1024];
        while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_recovered_from_without_a_restart() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let admin = hub.admin().unwrap();
    let joined_dir = joined(&hub, dir).await;
    let db = joined_dir.join("agent.redb");
    let size = std::fs::metadata(&db).unwrap().len();
    let Some(fs) = Tmpfs::mount(size + 8 * 1024 * 1024) else {
        return;
    };
    let data_dir = fs.path.join("agent");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::copy(&db, data_dir.join("agent.redb")).unwrap();
    let cluster = MemoryExecutor::new();
    let agent = start(&data_dir, cluster.clone());
    wait_for(
        &admin,
        WAIT,
        "a Ready",
        all_in_state(&names(&["a"]), "Ready"),
    )
    .await
    .unwrap();
    let filler = fs.fill();

    // Too big for what is left (nothing): committing it must grow the file.
    let blob: String = (0..512 * 1024)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let g = admin
        .apply_work(&config_work("big", only(&["a"]), &["k"], &blob))
        .await
        .unwrap()
        .generation;
    wait_condition(&admin, "StoreUnavailable True", |c| {
        find(c, "StoreUnavailable").is_some_and(|s| {
            s.status == "True" && s.reason == "StoreFailing" && !s.message.is_empty()
        })
    })
    .await;
    assert!(cluster.objects().is_empty());

    std::fs::remove_file(&filler).unwrap();
    wait_applied(&admin, "big", g, 1).await;
    wait_condition(&admin, "StoreUnavailable gone", |c| {
        find(c, "StoreUnavailable").is_none_or(|s| s.status == "False")
    })
    .await;
    assert_eq!(cluster.objects().len(), 1);
    assert!(!agent.task.is_finished());
    agent.stop().await;
}

/// Overwrite `len` bytes at `at` with random ones.
fn scribble(path: &Path, at: u64, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    f.write_all(&junk).unwrap();
    f.sync_all().unwrap();
}

fn run_binary(bin: &Path, data_dir: &Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(bin)
        .args(["run", "--data-dir"])
        .arg(data_dir)
        .args(["--executor", "memory", "--backoff-cap", "1s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            return (status.code(), text);
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (None, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_stops_the_agent_with_exit_code_4_and_says_how_to_recover() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let joined_dir = joined(&hub, dir).await;
    let db = joined_dir.join("agent.redb");
    let size = std::fs::metadata(&db).unwrap().len();
    let bin = agent_binary();
    // Its pages overwritten (the header kept), and the whole file overwritten.
    for (case, at) in [("pages", 4096u64), ("header too", 0)] {
        let data_dir = dir.join(format!("damaged-{}", at));
        std::fs::create_dir(&data_dir).unwrap();
        let copy = data_dir.join("agent.redb");
        std::fs::copy(&db, &copy).unwrap();
        scribble(&copy, at, (size - at) as usize);
        let (code, text) = tokio::task::spawn_blocking({
            let (bin, data_dir) = (bin.clone(), data_dir.clone());
            move || run_binary(&bin, &data_dir)
        })
        .await
        .unwrap();
        assert_eq!(
            code,
            // The documented code (`tether-agent --help`), spelled out: it is a contract.
            Some(4),
            "{case}: exit code; output:\n{text}"
        );
        assert!(
            text.contains(&copy.display().to_string()),
            "{case}: names the file:\n{text}"
        );
        assert!(
            text.contains("tetherctl clusters detach"),
            "{case}: recovery:\n{text}"
        );
        assert!(text.contains("join again"), "{case}: recovery:\n{text}");
        assert!(!text.contains("panicked"), "{case}:\n{text}");
    }
}

/// The hub holds a status cursor above everything the agent will send (its outbox was wiped,
/// identity kept: what a wiped store and a re-join under the same name look like to it).
/// The hub acknowledges through its own cursor, which the agent rightly ignores; it used to
/// resend at once, about 890 batches a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_batches_the_hub_does_not_retire_are_resent_with_backoff() {
    use tether_store::agent::{APPLIED, OUTBOX, OUTBOX_BY_WORK, OUTBOX_META};
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let (a, mem) = memory_agent(&hub, dir, "a", &token);
    wait_for(
        &admin,
        WAIT,
        "a Ready",
        all_in_state(&names(&["a"]), "Ready"),
    )
    .await
    .unwrap();
    // Nine statuses or more: the hub's cursor ends well above the three sent after the wipe.
    for value in ["1", "2", "3"] {
        for w in ["w1", "w2", "w3"] {
            let g = admin
                .apply_work(&config_work(w, only(&["a"]), &["k"], value))
                .await
                .unwrap()
                .generation;
            wait_applied(&admin, w, g, 1).await;
        }
    }
    a.stop().await.unwrap();
    {
        let store = tether_agent::open_store(&dir.join("agents").join("a")).unwrap();
        let applied = store.read(|tx| tx.list(&APPLIED)).unwrap();
        let queued = store.read(|tx| tx.list(&OUTBOX_BY_WORK)).unwrap();
        store
            .write(|tx| {
                for (work, _) in &applied {
                    tx.remove(&APPLIED, work)?;
                }
                for (work, seq) in &queued {
                    tx.remove(&OUTBOX_BY_WORK, work)?;
                    tx.remove_seq(&OUTBOX, *seq)?;
                }
                tx.remove(&OUTBOX_META, tether_store::agent::CURRENT)?;
                Ok::<_, tether_store::StoreError>(())
            })
            .unwrap();
    }
    let duplicates = || async {
        let text = admin.get_text("/metrics").await.unwrap();
        tether_sim::fleet::metric(&text, "tether_hub_status_duplicates_total")
    };
    let before = duplicates().await;
    let a = memory_agent_again(&hub, dir, "a", &token, &mem);
    // The first batch goes out at once, then every resend is paced.
    let start = Instant::now();
    while duplicates().await == before {
        assert!(start.elapsed() < WAIT, "the agent never sent its statuses");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resent = duplicates().await - before;
    eprintln!("{resent} status entries resent in 4 s");
    // At most three entries a batch; waits of 0.25-0.5, 0.5-1, 1-2 and 2-4 s: a handful of
    // batches (without the backoff: thousands of entries).
    assert!(resent <= 24.0, "{resent} status entries resent in 4 s");
    assert!(!a.is_finished());
    a.stop().await.unwrap();
}
