//! The fault suite, short and seeded: agent and hub processes SIGKILLed at random moments
//! under continuous applies. After each run: every acknowledged apply is there, every agent
//! reports the last generation, and the hub's status history has no duplicate and no gap.
//!
//! `TETHER_FAULT_SEED` and `TETHER_FAULT_KILLS` choose the seed and the number of kills; the
//! longer forms and their figures are in docs/recovery.md.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tether_sim::fleet::{all_in_state, metric, wait_for, LocalHub};

struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("TETHER_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x7e7e_2026);
        eprintln!("fault seed {seed} (TETHER_FAULT_SEED)");
        Self(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kills(default: usize) -> usize {
    std::env::var("TETHER_FAULT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Apply generation `g` of `app`, retrying while the hub is down; returns once acknowledged.
async fn apply(admin: &tether_hub::AdminClient, keys: &[&str], g: u64) {
    for _ in 0..200 {
        if admin
            .apply_work(&config_work("app", everywhere(), keys, &format!("g{g}")))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("apply of generation {g} never acknowledged");
}

async fn finish(
    admin: &tether_hub::AdminClient,
    d: &Path,
    procs: Vec<AgentProcess>,
    all: &[&str],
    generation: u64,
) {
    wait_applied(admin, "app", generation, all.len()).await;
    let metrics = admin.get_text("/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "tether_hub_status_gaps_total"), 0.0);
    for mut p in procs {
        sigterm(&mut p.child);
    }
    for c in all {
        assert_status_history_exact(admin, c, &d.join("agents").join(c)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_at_random_under_applies_lose_nothing() {
    init_logs();
    let mut rng = Rng::from_env();
    let bin = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = hub(d).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let all = ["ka", "kb"];
    let mut procs: Vec<AgentProcess> = all
        .iter()
        .map(|n| AgentProcess::spawn(&bin, &hub, d, n, &token))
        .collect();
    wait_for(&admin, WAIT, "Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let n = kills(20);
    let mut generation = 0;
    for _ in 0..n {
        generation += 1;
        apply(&admin, &keys, generation).await;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        let victim = rng.below(all.len() as u64) as usize;
        let p = procs.remove(victim);
        p.kill9();
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        procs.insert(
            victim,
            AgentProcess::spawn(&bin, &hub, d, all[victim], &token),
        );
    }
    eprintln!("{n} agent SIGKILLs under {generation} applies");
    finish(&admin, d, procs, &all, generation).await;
}

/// A `tether-hub serve` process on the data directory and ports of `hub`.
fn hub_process(bin: &Path, hub: &LocalHub, log: &Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(&hub.cfg.data_dir.root)
        .args(["--listen", &hub.cfg.listen.to_string()])
        .args(["--admin-listen", &hub.cfg.admin_listen.to_string()])
        .args(["--heartbeat-interval", "200ms", "--offline-grace", "2s"])
        .env("TETHER_STORE", store_arg(&hub.cfg.store))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning tether-hub")
}

/// `--store` for the hub's binary: the same store as the in-process hub that initialised it.
fn store_arg(store: &tether_hub::config::StoreLocation) -> String {
    match store {
        tether_hub::config::StoreLocation::Embedded => "embedded".into(),
        tether_hub::config::StoreLocation::Postgres(url) => url.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_at_random_under_applies_loses_nothing_acknowledged() {
    init_logs();
    let mut rng = Rng::from_env();
    let agent_bin = agent_binary();
    let hub_bin = built_binary("tether-hub", "tether-hub");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Initialise in process (ports pinned), then serve from a real process to SIGKILL.
    let mut hub = hub(d).await;
    let token = hub.token(2, true, Default::default()).await.unwrap();
    hub.stop().await;
    let log = d.join("hub.log");
    let mut hub_proc = hub_process(&hub_bin, &hub, &log);
    let admin = hub.admin().unwrap();
    let all = ["ha", "hb"];
    let procs: Vec<AgentProcess> = all
        .iter()
        .map(|n| AgentProcess::spawn(&agent_bin, &hub, d, n, &token))
        .collect();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let n = kills(10);
    let mut generation = 0;
    for _ in 0..n {
        generation += 1;
        apply(&admin, &keys, generation).await;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        let _ = hub_proc.kill();
        let _ = hub_proc.wait();
        // What was acknowledged must be in the store the next process opens.
        hub_proc = hub_process(&hub_bin, &hub, &log);
        let mut seen = None;
        for _ in 0..200 {
            if let Ok(w) = admin.work("app").await {
                seen = Some(w.summary.generation);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            seen,
            Some(generation),
            "acknowledged generation lost by a hub SIGKILL: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    eprintln!("{n} hub SIGKILLs under {generation} applies");
    wait_for(&admin, WAIT, "Ready", all_in_state(&names(&all), "Ready"))
        .await
        .unwrap();
    finish(&admin, d, procs, &all, generation).await;
    sigterm(&mut hub_proc);
}
