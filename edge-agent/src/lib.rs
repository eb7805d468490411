//! Tether edge agent: joins a hub (double opt-in) and keeps one outbound mutual-TLS QUIC
//! session, with heartbeats and certificate renewal.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod clock;
pub mod desired;
pub mod dial;
pub mod error;
pub mod executor;
pub mod facts;
pub mod hubs;
pub mod join;
pub mod leave;
pub mod outbox;
pub mod policy;
pub mod reconcile;
pub mod renewal;
pub mod session;
pub mod status_file;
pub mod supervise;

pub use error::{AgentError, EXIT_STORE_DAMAGED};
pub use join::{join, JoinOptions};
pub use session::{run, RunOptions};

use std::path::Path;
use std::time::Duration;
use tether_store::{Store, StoreError};
use tether_transport::backoff::Backoff;

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
    let path = data_dir.join("agent.redb");
    let existed = path.exists();
    match Store::open(&path) {
        Ok(s) => Ok(s),
        // A create that failed half way (disk full) leaves a file without a valid header,
        // which the next attempt would take for a damaged database. It never held data.
        Err(e) if !existed && error::store_retryable(&e) => {
            if let Err(rm) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %rm, "removing a half-created database");
            }
            Err(e.into())
        }
        Err(StoreError::Damaged { path, detail }) => Err(AgentError::StoreDamaged { path, detail }),
        // Not a redb file any more (its header was overwritten): damage too, not a retry.
        Err(StoreError::Open {
            path,
            source: redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)),
        }) => Err(AgentError::StoreDamaged { path, detail }),
        Err(StoreError::Open {
            path,
            source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
        }) if e.kind() == std::io::ErrorKind::InvalidData => Err(AgentError::StoreDamaged {
            path,
            detail: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Longest wait between attempts of [`open_store_waiting`].
pub const OPEN_RETRY_CAP: Duration = Duration::from_secs(30);

/// [`open_store`], waiting out failures that may pass (a full disk, a file still locked by the
/// previous process) with jittered backoff and a log line per attempt: exiting instead would
/// have the supervisor restart the agent into the same disk at once, a crash loop that frees
/// nothing. Damage and other lasting errors are returned at once.
pub async fn open_store_waiting(
    data_dir: &Path,
    base: Duration,
    mut shutdown: Shutdown,
) -> Result<Store, AgentError> {
    let mut backoff = Backoff::new(base, OPEN_RETRY_CAP);
    let mut attempt = 0u32;
    loop {
        let e = match open_store(data_dir) {
            Ok(s) => {
                if attempt > 0 {
                    tracing::warn!(dir = %data_dir.display(), attempts = attempt + 1, "agent database opened after failures");
                }
                return Ok(s);
            }
            Err(AgentError::Store(e)) if error::store_retryable(&e) => e,
            Err(e) => return Err(e),
        };
        attempt += 1;
        let delay = backoff.next_delay(rand::random());
        tracing::error!(dir = %data_dir.display(), error = %e, attempt, "cannot open the agent database (disk full or in use?); retrying in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return Err(AgentError::Interrupted),
        }
    }
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

    /// Whether shutdown was signalled (a task that ended may just have obeyed it).
    pub fn fired(&self) -> bool {
        *self.0.borrow()
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

/// Run store work off the async runtime (it may fsync).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Io(format!("store task failed: {e}")))
}
