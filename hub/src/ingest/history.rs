//! Each cluster's status history, written in two steps.
//!
//! Ingest appends accepted entries to `STATUS_UNFILED`, one hub-wide log in commit order: an
//! append dirties about one page per twenty-odd entries, where writing `cluster/<seq>` rows
//! straight away dirtied a history page per cluster per commit (and another for the prune),
//! which measured as most of the cost of ingest. The filer then moves the log into
//! `STATUS_HISTORY` in large batches, so each cluster's page is written once for many entries,
//! and prunes each cluster to its newest `STATUS_HISTORY_PER_CLUSTER` there.
//!
//! Both steps are store transactions through the group committer, so an entry is in exactly
//! one of the two tables at any commit; readers ([`history_of`]) and detach ([`forget`]) look at
//! both. For one cluster, every unfiled entry is newer than every filed one: entries arrive in
//! sequence order and the filer takes the oldest first.

use crate::ingest::committer::Committer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tether_store::hub::{
    cluster_prefix, status_history_key, StatusLogEntry, STATUS_HISTORY, STATUS_HISTORY_PER_CLUSTER,
    STATUS_UNFILED,
};
use tether_store::{ReadTx, StoreError, WriteTx};

/// Unfiled entries that wake the filer before its period is up: enough that a busy cluster's
/// page is written for hundreds of entries, few enough that a filing pass is a short commit.
pub const FILE_AT: usize = 16_384;
/// Entries one filing pass moves at most (it loops while there are more).
const FILE_MAX: usize = 32_768;
/// How long an entry stays unfiled at most when few arrive.
const FILE_EVERY: Duration = Duration::from_secs(1);

/// What the filer needs to know of ingest: how many entries it appended since the last pass.
#[derive(Default)]
pub struct Filer {
    unfiled: AtomicUsize,
    wake: tokio::sync::Notify,
}

impl Filer {
    pub(crate) fn appended(&self, n: usize) {
        if n > 0 && self.unfiled.fetch_add(n, Ordering::Relaxed) + n >= FILE_AT {
            self.wake.notify_one();
        }
    }
}

/// Move up to `max` of the oldest unfiled entries into each cluster's history, and prune the
/// clusters they touched. Returns how many it moved.
pub fn file(tx: &WriteTx, max: usize) -> Result<usize, StoreError> {
    let unfiled = tx.range(&STATUS_UNFILED, 0, max)?;
    let Some(&(last, _)) = unfiled.last() else {
        return Ok(0);
    };
    let moved = unfiled.len();
    let mut by_cluster: BTreeMap<String, Vec<StatusLogEntry>> = BTreeMap::new();
    for (_, e) in unfiled {
        by_cluster.entry(e.cluster.clone()).or_default().push(e);
    }
    let mut history = tx.open(&STATUS_HISTORY)?;
    for (cluster, entries) in &by_cluster {
        let newest = entries.iter().map(|e| e.seq).max().unwrap_or(0);
        // Keep (newest - PER_CLUSTER, newest]: older entries of this pass are not written at all.
        let horizon = newest.saturating_sub(STATUS_HISTORY_PER_CLUSTER as u64);
        for e in entries.iter().filter(|e| e.seq > horizon) {
            history.put(&status_history_key(cluster, e.seq), e)?;
        }
        if horizon > 0 {
            history.remove_range(
                &cluster_prefix(cluster),
                &status_history_key(cluster, horizon),
            )?;
        }
    }
    drop(history);
    tx.remove_through(&STATUS_UNFILED, last)?;
    Ok(moved)
}

/// One cluster's history, oldest first: what was filed, then what was not yet.
pub fn history_of(tx: &ReadTx, cluster: &str) -> Result<Vec<StatusLogEntry>, StoreError> {
    let filed = tx.list_prefix(&STATUS_HISTORY, &cluster_prefix(cluster))?;
    with_unfiled(tx, filed, Some(cluster))
}

/// Every cluster's history, each cluster's entries oldest first.
pub fn all_history(tx: &ReadTx) -> Result<Vec<StatusLogEntry>, StoreError> {
    with_unfiled(tx, tx.list(&STATUS_HISTORY)?, None)
}

fn with_unfiled(
    tx: &ReadTx,
    filed: Vec<(String, StatusLogEntry)>,
    cluster: Option<&str>,
) -> Result<Vec<StatusLogEntry>, StoreError> {
    let mut out: Vec<StatusLogEntry> = filed.into_iter().map(|(_, e)| e).collect();
    out.extend(
        tx.range(&STATUS_UNFILED, 0, usize::MAX)?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| cluster.is_none_or(|c| e.cluster == c)),
    );
    Ok(out)
}

/// Remove a cluster's history from both tables (detach).
pub(crate) fn forget(tx: &WriteTx, cluster: &str) -> Result<(), StoreError> {
    tx.remove_prefix(&STATUS_HISTORY, &cluster_prefix(cluster))?;
    for (seq, e) in tx.range(&STATUS_UNFILED, 0, usize::MAX)? {
        if e.cluster == cluster {
            tx.remove_seq(&STATUS_UNFILED, seq)?;
        }
    }
    Ok(())
}

/// Files unfiled entries when enough have arrived or `FILE_EVERY` has passed. Runs until the
/// committer stops.
pub(crate) async fn run(committer: Committer, filer: std::sync::Arc<Filer>) {
    loop {
        tokio::select! {
            _ = filer.wake.notified() => {}
            _ = tokio::time::sleep(FILE_EVERY) => {}
        }
        loop {
            // Taken before the pass: entries appended meanwhile count towards the next one.
            let counted = filer.unfiled.swap(0, Ordering::Relaxed);
            match committer.write(|tx| file(tx, FILE_MAX)).await {
                Ok(moved) if moved == FILE_MAX => continue,
                Ok(_) => break,
                Err(crate::ingest::committer::CommitError::Stopped) => return,
                Err(e) => {
                    // Nothing is lost: the entries stay unfiled and readers see them there.
                    filer.unfiled.fetch_add(counted, Ordering::Relaxed);
                    tracing::warn!(error = %e, "could not file status history; will retry");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::{WorkPhase, WorkStatus};
    use tether_store::Store;

    fn entry(cluster: &str, seq: u64) -> StatusLogEntry {
        StatusLogEntry {
            cluster: cluster.into(),
            seq,
            received_at_ms: 7,
            status: WorkStatus {
                work: "w".into(),
                generation: 1,
                hash: String::new(),
                phase: WorkPhase::Applied,
                conditions: vec![],
                resources: vec![],
                message: String::new(),
                observed_at_ms: 0,
            },
        }
    }

    fn append(store: &Store, cluster: &str, seqs: std::ops::RangeInclusive<u64>) {
        store
            .write(|tx| {
                let mut log = tx.open_log(&STATUS_UNFILED)?;
                for s in seqs {
                    log.append(&entry(cluster, s))?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    fn seqs(store: &Store, cluster: &str) -> Vec<u64> {
        store
            .read(|tx| history_of(tx, cluster))
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    }

    fn filed(store: &Store, cluster: &str) -> usize {
        store
            .read(|tx| tx.list_prefix(&STATUS_HISTORY, &cluster_prefix(cluster)))
            .unwrap()
            .len()
    }

    #[test]
    fn readers_see_the_same_history_before_and_after_filing_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.redb")).unwrap();
        append(&store, "a", 1..=5);
        append(&store, "b", 1..=3);
        append(&store, "a", 6..=7);
        let before = (seqs(&store, "a"), seqs(&store, "b"));
        assert_eq!(before.0, (1..=7).collect::<Vec<_>>());
        // A pass that stops in the middle leaves a's newest entries unfiled: still in order.
        assert_eq!(store.write(|tx| file(tx, 6)).unwrap(), 6);
        assert_eq!((filed(&store, "a"), filed(&store, "b")), (5, 1));
        assert_eq!((seqs(&store, "a"), seqs(&store, "b")), before);
        assert_eq!(store.write(|tx| file(tx, 100)).unwrap(), 4);
        assert_eq!(store.write(|tx| file(tx, 100)).unwrap(), 0);
        assert_eq!((filed(&store, "a"), filed(&store, "b")), (7, 3));
        assert_eq!((seqs(&store, "a"), seqs(&store, "b")), before);
        let all = store.read(all_history).unwrap();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn filing_keeps_each_clusters_newest_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.redb")).unwrap();
        let per = STATUS_HISTORY_PER_CLUSTER as u64;
        append(&store, "a", 1..=per / 2);
        store.write(|tx| file(tx, usize::MAX)).unwrap();
        // More than a whole history in one pass, and another cluster that must be left alone.
        append(&store, "a", per / 2 + 1..=2 * per + 3);
        append(&store, "b", 1..=2);
        store.write(|tx| file(tx, usize::MAX)).unwrap();
        let a = seqs(&store, "a");
        assert_eq!(a.len(), STATUS_HISTORY_PER_CLUSTER);
        assert_eq!(a.first(), Some(&(per + 4)));
        assert_eq!(a.last(), Some(&(2 * per + 3)));
        assert_eq!(seqs(&store, "b"), vec![1, 2]);
    }

    #[test]
    fn forget_removes_one_clusters_filed_and_unfiled_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.redb")).unwrap();
        append(&store, "a", 1..=3);
        append(&store, "b", 1..=2);
        store.write(|tx| file(tx, 2)).unwrap();
        append(&store, "a", 4..=4);
        store.write(|tx| forget(tx, "a")).unwrap();
        assert!(seqs(&store, "a").is_empty());
        assert_eq!(seqs(&store, "b"), vec![1, 2]);
        store.write(|tx| file(tx, usize::MAX)).unwrap();
        assert_eq!((filed(&store, "a"), filed(&store, "b")), (0, 2));
    }
}
