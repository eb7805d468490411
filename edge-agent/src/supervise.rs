//! Supervision of the agent's long-lived tasks.
//!
//! A task that panicked used to vanish: `tokio::spawn` keeps the panic in a `JoinHandle` that
//! nobody awaited, and the agent stayed connected, acknowledging deliveries it never applied.
//! Here a task that panics or returns before shutdown is logged, reported in the heartbeat
//! conditions (see [`TaskHealth`]), and restarted after a jittered, bounded backoff.

use crate::Shutdown;
use rand::Rng;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_transport::backoff::Backoff;

/// First and longest wait before restarting a failed task.
pub const RESTART_BASE: Duration = Duration::from_millis(200);
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts its backoff over.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Why each supervised task last failed, until it reports itself healthy again.
#[derive(Clone, Default)]
pub struct TaskHealth(Arc<Mutex<BTreeMap<&'static str, String>>>);

impl TaskHealth {
    pub fn failed(&self, task: &'static str, why: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task, why);
    }

    /// The task did useful work again (the reconciler: a pass finished).
    pub fn healthy(&self, task: &'static str) {
        let was = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task);
        if was.is_some() {
            tracing::warn!(task, "agent task works again");
        }
    }

    /// Failing tasks and why, in name order (stable, so heartbeats compare equal).
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// Aborts a spawned task when dropped, so that cancelling the awaiting side (shutdown, a
/// supervisor being aborted) never leaves the task running detached with the store open.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run `make()` as a task until `shutdown`; restart it whenever it panics or returns early.
pub async fn supervise<F, Fut>(
    task: &'static str,
    health: TaskHealth,
    mut shutdown: Shutdown,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new(RESTART_BASE, RESTART_CAP);
    loop {
        let started = Instant::now();
        let mut handle = tokio::spawn(make());
        let _guard = AbortOnDrop(handle.abort_handle());
        let ended = tokio::select! {
            r = &mut handle => r,
            _ = shutdown.wait() => {
                handle.abort();
                let _ = handle.await;
                return;
            }
        };
        if shutdown.fired() {
            return;
        }
        let why = match ended {
            Ok(()) => "it returned before shutdown".to_string(),
            Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(&*e.into_panic())),
            Err(e) => format!("it was cancelled: {e}"),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::rng().random());
        tracing::error!(task, reason = %why, "agent task failed; restarting it in {delay:?}");
        health.failed(task, why);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
    }
}
