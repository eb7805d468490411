//! Group commit: many small durable writes (delivery acks, status batches from thousands of
//! agents) share one fsync. Callers wait for the commit that includes their write, so "committed
//! before acknowledged" still holds for each of them.
//!
//! A batch commits or fails as a whole. A failing write fails every caller in its batch; they
//! have acknowledged nothing yet, so agents simply resend.

use std::sync::Arc;
use tether_store::{Store, StoreError, WriteTx};
use tokio::sync::{mpsc, oneshot};

/// Writes queued at most; callers wait (backpressure) beyond this.
const QUEUE: usize = 4096;
/// Writes per transaction at most.
const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;
type Job = Box<dyn FnOnce(&WriteTx) -> Result<Reply, StoreError> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("store write failed: {0}")]
    Store(Arc<str>),
    #[error("the hub's store writer has stopped")]
    Stopped,
}

#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Committer {
    /// Start the writer on a dedicated thread (redb commits block).
    pub fn start(store: Arc<Store>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (done, stopped) = tokio::sync::watch::channel(false);
        let spawned = std::thread::Builder::new()
            .name("tether-committer".into())
            .spawn(move || {
                writer(store, rx);
                let _ = done.send(true);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the store writer thread");
        }
        Self { queue, stopped }
    }

    /// Resolves once the writer thread has exited (every `Committer` clone dropped) and has
    /// released the store.
    pub fn stopped(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopped.clone()
    }

    /// Run `f` in the next group transaction and wait until it is durable.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, CommitError> {
        let (tx, rx) = oneshot::channel::<Result<R, CommitError>>();
        let job: Job = Box::new(move |wtx: &WriteTx| {
            let value = f(wtx)?;
            let reply: Reply = Box::new(move |committed| {
                let _ = tx.send(committed.map(|()| value).map_err(CommitError::Store));
            });
            Ok(reply)
        });
        self.queue
            .send(job)
            .await
            .map_err(|_| CommitError::Stopped)?;
        rx.await.unwrap_or_else(|_| {
            // The batch failed before reaching this write: the error went to the others.
            Err(CommitError::Store(Arc::from(
                "batch aborted by another write's failure",
            )))
        })
    }
}

fn writer(store: Arc<Store>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let result = store.write(|tx| {
            for job in jobs.drain(..) {
                replies.push(job(tx)?);
            }
            Ok::<_, StoreError>(())
        });
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, writes = replies.len(), "group commit failed");
            Arc::<str>::from(e.to_string())
        });
        for reply in replies {
            reply(outcome.clone());
        }
    }
}
