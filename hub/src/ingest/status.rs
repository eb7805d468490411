//! Status ingest: exactly-once application of agent outbox batches.
//!
//! The hub keeps, per cluster, the highest sequence number it stored (the cursor). A batch
//! covers `from_seq..=to_seq`; entries at or below the cursor were stored before (a resend after
//! a lost ack) and are dropped. A batch that starts past `cursor + 1` means entries were lost on
//! the agent side: impossible by design, so it is logged and counted, never hidden.
//!
//! Entries about works that are not the cluster's (see `scope`) are dropped but still
//! acknowledged, so a confused agent does not resend them forever. Stored entries also go to
//! the cluster's history, by way of the hub-wide unfiled log (see `history`).

use crate::limits::scope::Scope;
use tether_protocol::{StatusBatch, WorkPhase};
use tether_store::hub::{
    cluster_work_key, ClusterWorkRecord, StatusLogEntry, CLUSTER_WORKS, LEGACY_STATUS_LOG,
    STATUS_CURSORS, STATUS_UNFILED,
};
use tether_store::{Store, StoreError, WriteTx};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Acknowledge through this sequence number.
    pub through: u64,
    pub stored: usize,
    pub duplicates: usize,
    /// Entries about works that are not this cluster's (dropped).
    pub foreign: usize,
    /// `(expected_from, got_from)` when the batch skipped sequence numbers.
    pub gap: Option<(u64, u64)>,
}

/// The rows [`ingest`] reads, for the group commit to read with its other writes'.
pub(crate) fn reads(cluster: &str, batch: &StatusBatch) -> crate::ingest::committer::Reads {
    let mut rows = vec![(STATUS_CURSORS.name(), cluster.to_string())];
    rows.extend(batch.entries.iter().map(|e| {
        (
            CLUSTER_WORKS.name(),
            cluster_work_key(cluster, &e.status.work),
        )
    }));
    rows
}

/// `scope`: what the hub knows and selects of the works this batch names.
pub fn ingest(
    tx: &WriteTx,
    cluster: &str,
    batch: &StatusBatch,
    scope: &Scope,
    now_ms: u64,
) -> Result<Ingested, StoreError> {
    // Each table opened once for the whole batch (see `OpenStrTable`); nothing else may open
    // them while these are in scope.
    let mut cursors = tx.open(&STATUS_CURSORS)?;
    let mut works = tx.open(&CLUSTER_WORKS)?;
    let mut unfiled = tx.open_log(&STATUS_UNFILED)?;
    let cursor = cursors.get(cluster)?.unwrap_or(0);
    let mut out = Ingested {
        through: cursor.max(batch.to_seq),
        ..Ingested::default()
    };
    if batch.from_seq > cursor + 1 {
        out.gap = Some((cursor + 1, batch.from_seq));
    }
    for entry in &batch.entries {
        if entry.seq <= cursor {
            out.duplicates += 1;
            continue;
        }
        if entry.seq < batch.from_seq || entry.seq > batch.to_seq {
            // Outside the range the batch claims: refuse to store it rather than guess.
            tracing::warn!(%cluster, seq = entry.seq, "status entry outside its batch range; dropped");
            continue;
        }
        let key = cluster_work_key(cluster, &entry.status.work);
        let row = works.get(&key)?;
        let withdrawn = matches!(entry.status.phase, WorkPhase::Removed | WorkPhase::Orphaned);
        let work = &entry.status.work;
        // A late withdrawal of a known work (its row went with the removal's ack) still
        // belongs in the history; anything else without a row must be selected for us.
        let late_withdrawal = withdrawn && scope.known.contains(work);
        if row.is_none() && !scope.selected.contains(work) && !late_withdrawal {
            out.foreign += 1;
            continue;
        }
        match row {
            Some(mut r) if r.status_seq < entry.seq => {
                r.status = Some(entry.status.clone());
                r.status_seq = entry.seq;
                works.put(&key, &r)?;
            }
            Some(_) => {}
            // The row goes away when the removal is acknowledged; a late status must not
            // bring it back.
            None if withdrawn => {}
            None => works.put(
                &key,
                &ClusterWorkRecord {
                    delivered: None,
                    delivered_at_ms: None,
                    status: Some(entry.status.clone()),
                    status_seq: entry.seq,
                },
            )?,
        }
        unfiled.append(&StatusLogEntry {
            cluster: cluster.to_string(),
            seq: entry.seq,
            received_at_ms: now_ms,
            status: entry.status.clone(),
        })?;
        out.stored += 1;
    }
    if out.through > cursor {
        cursors.put(cluster, &out.through)?;
    }
    Ok(out)
}

/// Drop the global status log of older hubs (every entry of every cluster, never pruned: a
/// hostile cluster could grow it without bound). It was history for display only; what each
/// cluster last reported stays in `CLUSTER_WORKS`. Returns how many entries it held, if it
/// existed.
pub fn retire_legacy_log(store: &Store) -> Result<Option<u64>, StoreError> {
    let held = store.read(|tx| tx.seq_len(&LEGACY_STATUS_LOG))?;
    // `seq_len` reads a missing table as empty; dropping tells whether it was there.
    let existed = store.write(|tx| tx.drop_seq_table(&LEGACY_STATUS_LOG))?;
    Ok(existed.then_some(held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::{StatusEntry, WorkStatus};
    use tether_store::hub::{cluster_prefix, STATUS_HISTORY_PER_CLUSTER};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.redb")).unwrap();
        (dir, store)
    }

    fn entry(seq: u64, work: &str, phase: WorkPhase) -> StatusEntry {
        StatusEntry {
            seq,
            status: WorkStatus {
                work: work.into(),
                generation: 1,
                hash: String::new(),
                phase,
                conditions: vec![],
                resources: vec![],
                message: String::new(),
                observed_at_ms: 0,
            },
        }
    }

    fn batch(from: u64, to: u64, works: &[&str]) -> StatusBatch {
        StatusBatch {
            from_seq: from,
            to_seq: to,
            entries: (from..=to)
                .zip(works.iter().cycle())
                .map(|(s, w)| entry(s, w, WorkPhase::Applied))
                .collect(),
        }
    }

    fn scope(known: &[&str], selected: &[&str]) -> Scope {
        Scope {
            known: known.iter().map(|s| s.to_string()).collect(),
            selected: selected.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn run(store: &Store, b: &StatusBatch, s: &Scope) -> Ingested {
        store.write(|tx| ingest(tx, "c1", b, s, 7)).unwrap()
    }

    fn history(store: &Store) -> Vec<u64> {
        store
            .read(|tx| crate::ingest::history::history_of(tx, "c1"))
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn resends_are_dropped_and_gaps_reported() {
        let (_d, store) = store();
        let s = scope(&["w"], &["w"]);
        let first = run(&store, &batch(1, 3, &["w"]), &s);
        assert_eq!((first.through, first.stored, first.gap), (3, 3, None));
        let again = run(&store, &batch(1, 3, &["w"]), &s);
        assert_eq!((again.through, again.stored, again.duplicates), (3, 0, 3));
        let overlap = run(&store, &batch(2, 5, &["w"]), &s);
        assert_eq!((overlap.stored, overlap.duplicates), (2, 2));
        let gap = run(&store, &batch(9, 9, &["w"]), &s);
        assert_eq!((gap.gap, gap.through, gap.stored), (Some((6, 9)), 9, 1));
        assert_eq!(history(&store), vec![1, 2, 3, 4, 5, 9]);
        let row = store
            .read(|tx| tx.get(&CLUSTER_WORKS, &cluster_work_key("c1", "w")))
            .unwrap()
            .unwrap();
        assert_eq!(row.status_seq, 9);
        assert_eq!(
            store.read(|tx| tx.get(&STATUS_CURSORS, "c1")).unwrap(),
            Some(9)
        );
    }

    #[test]
    fn foreign_works_are_acknowledged_not_stored() {
        let (_d, store) = store();
        let out = run(
            &store,
            &batch(1, 2, &["theirs", "invented"]),
            &scope(&["theirs"], &[]),
        );
        assert_eq!((out.through, out.stored, out.foreign), (2, 0, 2));
        assert!(history(&store).is_empty());
        let rows = store
            .read(|tx| tx.list_prefix(&CLUSTER_WORKS, &cluster_prefix("c1")))
            .unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn a_late_withdrawal_is_history_but_does_not_recreate_the_row() {
        let (_d, store) = store();
        let b = StatusBatch {
            from_seq: 1,
            to_seq: 1,
            entries: vec![entry(1, "gone", WorkPhase::Removed)],
        };
        let out = run(&store, &b, &scope(&["gone"], &[]));
        assert_eq!(out.stored, 1);
        assert_eq!(history(&store), vec![1]);
        let row = store
            .read(|tx| tx.get(&CLUSTER_WORKS, &cluster_work_key("c1", "gone")))
            .unwrap();
        assert_eq!(row, None);
    }

    #[test]
    fn history_keeps_the_newest_sequence_numbers() {
        let (_d, store) = store();
        let s = scope(&["w"], &["w"]);
        let per = STATUS_HISTORY_PER_CLUSTER as u64;
        let mut from = 1;
        for _ in 0..5 {
            run(&store, &batch(from, from + per / 2 - 1, &["w"]), &s);
            store
                .write(|tx| crate::ingest::history::file(tx, usize::MAX))
                .unwrap();
            from += per / 2;
        }
        let kept = history(&store);
        assert_eq!(kept.len(), STATUS_HISTORY_PER_CLUSTER);
        assert_eq!(kept.first(), Some(&(from - per)));
        assert_eq!(kept.last(), Some(&(from - 1)));
    }

    /// The cursor lives in the transaction: when the group commit fails, a resend of the same
    /// batch is stored, not dropped as a duplicate.
    #[test]
    fn a_failed_commit_does_not_advance_the_cursor() {
        let (_d, store) = store();
        let s = scope(&["w"], &["w"]);
        let failed: Result<(), StoreError> = store.write(|tx| {
            ingest(tx, "c1", &batch(1, 2, &["w"]), &s, 7)?;
            Err(StoreError::Corrupt {
                table: "other",
                detail: "another write of the group failed".into(),
            })
        });
        assert!(failed.is_err());
        let out = run(&store, &batch(1, 2, &["w"]), &s);
        assert_eq!((out.stored, out.duplicates), (2, 0));
        assert_eq!(history(&store), vec![1, 2]);
    }
}
