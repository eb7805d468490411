//! Group commit: many small durable writes (delivery acks, status batches from thousands of
//! agents) share one fsync. Callers wait for the commit that includes their write, so "committed
//! before acknowledged" still holds for each of them.
//!
//! A batch commits or fails as a whole. A failing write fails every caller in its batch; they
//! have acknowledged nothing yet, so agents simply resend.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_store::{Store, StoreError, WriteTx};
use tokio::sync::{mpsc, oneshot};

/// Writes queued at most; callers wait (backpressure) beyond this.
const QUEUE: usize = 4096;
/// Writes per transaction at most.
const MAX_BATCH: usize = 1024;
/// How long a transaction waits at most for the callers of the previous one (see `gather`).
const GATHER_MAX: Duration = Duration::from_micros(500);
/// How often the writer looks for them meanwhile.
const GATHER_POLL: Duration = Duration::from_micros(20);

type Reply = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;
type Run = Box<dyn FnOnce(&WriteTx) -> Result<Reply, StoreError> + Send>;

/// Rows a write will read, by table name and key (see [`Committer::write_reading`]).
pub type Reads = Vec<(&'static str, String)>;

struct Job {
    reads: Reads,
    run: Run,
}

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
        self.write_reading(Vec::new(), f).await
    }

    /// As [`Committer::write`], naming the rows `f` will `get`: the transaction reads those of
    /// every write it groups in one go (one statement on PostgreSQL, where each read is
    /// otherwise a round trip, for the whole group).
    pub async fn write_reading<R: Send + 'static>(
        &self,
        reads: Reads,
        f: impl FnOnce(&WriteTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, CommitError> {
        let (tx, rx) = oneshot::channel::<Result<R, CommitError>>();
        let run: Run = Box::new(move |wtx: &WriteTx| {
            let value = f(wtx)?;
            let reply: Reply = Box::new(move |committed| {
                let _ = tx.send(committed.map(|()| value).map_err(CommitError::Store));
            });
            Ok(reply)
        });
        let job = Job { reads, run };
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

fn drain(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

fn writer(store: Arc<Store>, mut rx: mpsc::Receiver<Job>) {
    let mut last = Committed::default();
    loop {
        let (first, queued) = match rx.try_recv() {
            Ok(j) => (j, true),
            Err(_) => match rx.blocking_recv() {
                Some(j) => (j, false),
                None => break,
            },
        };
        let mut jobs = vec![first];
        drain(&mut rx, &mut jobs);
        gather(&mut rx, &mut jobs, &last, queued);
        let n = jobs.len();
        let mut replies = Vec::with_capacity(n);
        let started = Instant::now();
        let result = store.write(|tx| {
            let reads: Vec<(&'static str, &str)> = jobs
                .iter()
                .flat_map(|j| j.reads.iter().map(|(t, k)| (*t, k.as_str())))
                .collect();
            tx.prefetch(&reads)?;
            for job in jobs.drain(..) {
                replies.push((job.run)(tx)?);
            }
            Ok::<_, StoreError>(())
        });
        last = Committed {
            jobs: n,
            took: started.elapsed(),
        };
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, writes = replies.len(), "group commit failed");
            Arc::<str>::from(e.to_string())
        });
        for reply in replies {
            reply(outcome.clone());
        }
    }
}

/// What the previous group transaction held and how long it took.
#[derive(Default)]
struct Committed {
    jobs: usize,
    took: Duration,
}

/// Hold the transaction back briefly for the callers of the previous commit. Each of them
/// usually writes again within microseconds of its answer (an agent's next status batch), but
/// while the writer took what was queued at once, callers settled into two cohorts that
/// alternated: each commit, its fsync and its page writes served half of them (measured: 32
/// jobs a commit with 64 writers). Waiting for the returning cohort merges them.
///
/// `queued`: the first job was already waiting when the last commit ended, so what is here is
/// another cohort and the previous commit's callers come on top; otherwise they are the ones
/// arriving. A lone sequential caller waits for nothing (its next write is the first job), and
/// the wait is bounded by a quarter of the last commit, at most `GATHER_MAX`, so that callers
/// that do not come back cost little.
fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, last: &Committed, queued: bool) {
    let expected = if queued {
        jobs.len() + last.jobs
    } else {
        last.jobs
    };
    let target = expected.min(MAX_BATCH);
    let deadline = Instant::now() + (last.took / 4).min(GATHER_MAX);
    while jobs.len() < target && Instant::now() < deadline {
        std::thread::sleep(GATHER_POLL);
        drain(rx, jobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_store::StrTable;

    const T: StrTable<u64> = StrTable::new("t");

    fn committer() -> (tempfile::TempDir, Arc<Store>, Committer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("db.redb")).unwrap());
        let c = Committer::start(store.clone());
        (dir, store, c)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_land() {
        let (_dir, store, c) = committer();
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u64 {
                    c.write(move |tx| tx.put(&T, &format!("w{w:02}/{i:02}"), &i))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rows = store.read(|tx| tx.list(&T)).unwrap();
        assert_eq!(rows.len(), 16 * 20);
    }

    /// A failing write fails every caller of its transaction, and nothing of it is stored;
    /// the writer goes on with the next transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_fails_its_whole_batch() {
        let (_dir, store, c) = committer();
        let (a, b, bad) = tokio::join!(
            c.write(|tx| tx.put(&T, "a", &1)),
            c.write(|tx| tx.put(&T, "b", &2)),
            c.write(|tx| {
                tx.put(&T, "bad", &3)?;
                Err::<(), _>(StoreError::Corrupt {
                    table: "t",
                    detail: "test".into(),
                })
            }),
        );
        assert!(bad.is_err());
        // a and b either shared the failed transaction (failed, not stored) or committed
        // apart from it; never acknowledged and lost, never failed and kept.
        let stored = store.read(|tx| tx.list(&T)).unwrap();
        assert!(stored.iter().all(|(k, _)| k != "bad"), "{stored:?}");
        for (key, result) in [("a", &a), ("b", &b)] {
            assert_eq!(
                result.is_ok(),
                stored.iter().any(|(k, _)| k == key),
                "{key}: {result:?} vs {stored:?}"
            );
        }
        c.write(|tx| tx.put(&T, "after", &3)).await.unwrap();
        assert_eq!(store.read(|tx| tx.get(&T, "after")).unwrap(), Some(3));
    }

    /// A lone caller writing one thing after another is not held back waiting for others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_caller_is_not_delayed() {
        let (_dir, _store, c) = committer();
        let mut gathered = Duration::ZERO;
        for i in 0..50u64 {
            let t = Instant::now();
            c.write(move |tx| tx.put(&T, "k", &i)).await.unwrap();
            gathered += t.elapsed();
        }
        // Generous: fsyncs dominate; the point is that no GATHER_MAX per write is added for
        // callers that are not there.
        assert!(gathered < Duration::from_secs(10), "{gathered:?}");
    }

    #[test]
    fn gather_waits_for_the_returning_callers_only() {
        let (queue, mut rx) = mpsc::channel::<Job>(QUEUE);
        let job = || Job {
            reads: Vec::new(),
            run: Box::new(|_| Ok(Box::new(|_| {}) as Reply)),
        };
        // Nothing comes back: bounded by a quarter of the last commit.
        let last = Committed {
            jobs: 8,
            took: Duration::from_millis(2),
        };
        let mut jobs = vec![job()];
        let t = Instant::now();
        gather(&mut rx, &mut jobs, &last, false);
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(jobs.len(), 1);
        // The callers are back: taken, and no waiting beyond them.
        for _ in 0..7 {
            queue.try_send(job()).map_err(|_| ()).unwrap();
        }
        let mut jobs = vec![job()];
        gather(&mut rx, &mut jobs, &last, false);
        assert_eq!(jobs.len(), 8);
        // A lone caller: nothing to wait for.
        let lone = Committed {
            jobs: 1,
            took: Duration::from_secs(10),
        };
        let t = Instant::now();
        gather(&mut rx, &mut vec![job()], &lone, false);
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
