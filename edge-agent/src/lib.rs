//! Tether edge agent: joins a hub (double opt-in) and keeps one outbound mutual-TLS QUIC
//! session, with heartbeats and certificate renewal.

#![forbid(unsafe_code)]

pub mod desired;
pub mod dial;
pub mod error;
pub mod executor;
pub mod facts;
pub mod join;
pub mod outbox;
pub mod reconcile;
pub mod renewal;
pub mod session;

pub use error::AgentError;
pub use join::{join, JoinOptions};
pub use session::{run, RunOptions};

use std::path::Path;
use tether_store::Store;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Open (creating if needed) the agent's database in `data_dir`, owner-only.
pub fn open_store(data_dir: &Path) -> Result<Store, AgentError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| AgentError::Io(format!("creating {}: {e}", data_dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::Io(format!("restricting {}: {e}", data_dir.display())))?;
    }
    Ok(Store::open(data_dir.join("agent.redb"))?)
}

/// Cooperative shutdown signal shared by the join and run loops.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Never fires.
    pub fn never() -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        Shutdown(rx)
    }

    pub async fn wait(&mut self) {
        while !*self.0.borrow() {
            if self.0.changed().await.is_err() {
                // Sender gone without signalling: never fire.
                std::future::pending::<()>().await;
            }
        }
    }
}
