//! The status outbox: every status change is appended here in the same transaction as the
//! local state it describes, and deleted only after the hub acknowledged it durably.
//!
//! Bounded by coalescing: a work has at most one unacknowledged entry, because a newer status
//! of the same work replaces the older one (under a new sequence number). The latest status of
//! every work is therefore never dropped, and the outbox never holds more entries than works.

use tether_protocol::{StatusBatch, StatusEntry, WorkStatus};
use tether_store::agent::{OutboxMeta, CURRENT, OUTBOX, OUTBOX_BY_WORK, OUTBOX_META};
use tether_store::{ReadTx, StoreError, WriteTx};

/// Entries per batch; a batch is also cut at `MAX_BATCH_BYTES` of encoded status.
pub const MAX_BATCH_ENTRIES: usize = 256;
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

fn meta(tx: &WriteTx) -> Result<OutboxMeta, StoreError> {
    let mut m = tx.get(&OUTBOX_META, CURRENT)?.unwrap_or_default();
    m.next_seq = m.next_seq.max(m.acked_through + 1).max(1);
    Ok(m)
}

/// Queue a status; supersedes the work's unacknowledged entry if there is one.
pub fn record(tx: &WriteTx, status: &WorkStatus) -> Result<u64, StoreError> {
    let mut m = meta(tx)?;
    if let Some(old) = tx.get(&OUTBOX_BY_WORK, &status.work)? {
        tx.remove_seq(&OUTBOX, old)?;
    }
    let seq = m.next_seq;
    m.next_seq += 1;
    tx.insert_at(&OUTBOX, seq, status)?;
    tx.put(&OUTBOX_BY_WORK, &status.work, &seq)?;
    tx.put(&OUTBOX_META, CURRENT, &m)?;
    Ok(seq)
}

/// The next batch to send, or `None` when everything was acknowledged.
pub fn next_batch(tx: &ReadTx) -> Result<Option<StatusBatch>, StoreError> {
    let m = tx.get(&OUTBOX_META, CURRENT)?.unwrap_or_default();
    let from_seq = m.acked_through + 1;
    let mut entries = Vec::new();
    let mut bytes = 0;
    for (seq, status) in tx.range(&OUTBOX, from_seq, MAX_BATCH_ENTRIES)? {
        bytes += tether_protocol::encode(&status)
            .map(|b| b.len())
            .unwrap_or(0);
        if !entries.is_empty() && bytes > MAX_BATCH_BYTES {
            break;
        }
        entries.push(StatusEntry { seq, status });
    }
    let to_seq = match entries.last() {
        Some(e) => e.seq,
        // Nothing left but sequence numbers that were superseded: let the hub's cursor move on.
        None if m.next_seq > from_seq => m.next_seq - 1,
        None => return Ok(None),
    };
    Ok(Some(StatusBatch {
        from_seq,
        to_seq,
        entries,
    }))
}

/// The hub stored everything through `through`: forget it.
pub fn acknowledge(tx: &WriteTx, through: u64) -> Result<(), StoreError> {
    let mut m = meta(tx)?;
    if through <= m.acked_through {
        return Ok(());
    }
    if through >= m.next_seq {
        // The hub claims more than we ever sent: refuse to lose anything over it.
        tracing::warn!(
            through,
            next = m.next_seq,
            "hub acknowledged status entries this agent never sent; ignoring"
        );
        return Ok(());
    }
    for (seq, status) in tx_range_through(tx, m.acked_through + 1, through)? {
        if tx.get(&OUTBOX_BY_WORK, &status.work)? == Some(seq) {
            tx.remove(&OUTBOX_BY_WORK, &status.work)?;
        }
    }
    tx.remove_through(&OUTBOX, through)?;
    m.acked_through = through;
    tx.put(&OUTBOX_META, CURRENT, &m)?;
    Ok(())
}

fn tx_range_through(
    tx: &WriteTx,
    from: u64,
    through: u64,
) -> Result<Vec<(u64, WorkStatus)>, StoreError> {
    Ok(tx
        .range(
            &OUTBOX,
            from,
            usize::try_from(through - from + 1).unwrap_or(usize::MAX),
        )?
        .into_iter()
        .take_while(|(seq, _)| *seq <= through)
        .collect())
}

pub fn depth(tx: &ReadTx) -> Result<u64, StoreError> {
    tx.seq_len(&OUTBOX)
}
