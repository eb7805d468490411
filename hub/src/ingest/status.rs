//! Status ingest: exactly-once application of agent outbox batches.
//!
//! The hub keeps, per cluster, the highest sequence number it stored (the cursor). A batch
//! covers `from_seq..=to_seq`; entries at or below the cursor were stored before (a resend after
//! a lost ack) and are dropped. A batch that starts past `cursor + 1` means entries were lost on
//! the agent side: impossible by design, so it is logged and counted, never hidden.
//!
//! Entries about works that are not the cluster's (see `scope`) are dropped but still
//! acknowledged, so a confused agent does not resend them forever. The per-cluster history
//! keeps the entries of the newest `STATUS_HISTORY_PER_CLUSTER` sequence numbers (fewer rows
//! when some were duplicates or foreign).

use crate::limits::scope::Scope;
use tether_protocol::{StatusBatch, WorkPhase};
use tether_store::hub::{
    cluster_prefix, cluster_work_key, status_history_key, ClusterWorkRecord, StatusLogEntry,
    CLUSTER_WORKS, LEGACY_STATUS_LOG, STATUS_CURSORS, STATUS_HISTORY, STATUS_HISTORY_PER_CLUSTER,
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

/// `scope`: what the hub knows and selects of the works this batch names.
pub fn ingest(
    tx: &WriteTx,
    cluster: &str,
    batch: &StatusBatch,
    scope: &Scope,
    now_ms: u64,
) -> Result<Ingested, StoreError> {
    let cursor = tx.get(&STATUS_CURSORS, cluster)?.unwrap_or(0);
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
        let row = tx.get(&CLUSTER_WORKS, &key)?;
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
                tx.put(&CLUSTER_WORKS, &key, &r)?;
            }
            Some(_) => {}
            // The row goes away when the removal is acknowledged; a late status must not
            // bring it back.
            None if withdrawn => {}
            None => tx.put(
                &CLUSTER_WORKS,
                &key,
                &ClusterWorkRecord {
                    delivered: None,
                    delivered_at_ms: None,
                    status: Some(entry.status.clone()),
                    status_seq: entry.seq,
                },
            )?,
        }
        tx.put(
            &STATUS_HISTORY,
            &status_history_key(cluster, entry.seq),
            &StatusLogEntry {
                cluster: cluster.to_string(),
                seq: entry.seq,
                received_at_ms: now_ms,
                status: entry.status.clone(),
            },
        )?;
        out.stored += 1;
    }
    if out.through > cursor {
        tx.put(&STATUS_CURSORS, cluster, &out.through)?;
    }
    // Keep the newest STATUS_HISTORY_PER_CLUSTER sequence numbers: a range delete below the
    // horizon costs what it removes (a few rows a batch), where counting the kept rows cost a
    // walk over all of them on every batch.
    let horizon = out
        .through
        .saturating_sub(STATUS_HISTORY_PER_CLUSTER as u64);
    if out.stored > 0 && horizon > 0 {
        tx.remove_range(
            &STATUS_HISTORY,
            &cluster_prefix(cluster),
            &status_history_key(cluster, horizon),
        )?;
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
