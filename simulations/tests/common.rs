//! Shared set-up for the end-to-end tests: a hub with fast health timings on loopback.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use tether_hub::HubConfig;
use tether_protocol::Labels;
use tether_sim::fleet::{AgentSpec, LocalAgent, LocalHub};

pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);
pub const WAIT: Duration = Duration::from_secs(20);

pub fn fast_config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::new(dir);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.health.heartbeat_interval = HEARTBEAT;
    cfg.health.offline_grace = OFFLINE_GRACE;
    cfg
}

pub async fn hub(dir: &Path) -> LocalHub {
    LocalHub::start(&dir.join("hub"), fast_config(&dir.join("hub")))
        .await
        .unwrap()
}

pub async fn hub_with(dir: &Path, tweak: impl FnOnce(&mut HubConfig)) -> LocalHub {
    let mut cfg = fast_config(&dir.join("hub"));
    tweak(&mut cfg);
    LocalHub::start(&dir.join("hub"), cfg).await.unwrap()
}

pub fn spec(hub: &LocalHub, dir: &Path, name: &str, token: &str) -> AgentSpec {
    AgentSpec {
        name: name.to_string(),
        data_dir: dir.join("agents").join(name),
        hub: format!("localhost:{}", hub.quic_addr().port()),
        token: token.to_string(),
        ca_sha256: hub.ca_sha256.clone(),
        labels: Labels::from([("site".to_string(), name.to_string())]),
    }
}

pub fn agent(hub: &LocalHub, dir: &Path, name: &str, token: &str) -> LocalAgent {
    LocalAgent::spawn(spec(hub, dir, name, token))
}

pub fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
