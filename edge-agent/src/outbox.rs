//! The status outbox: every status change is appended here in the same transaction as the
//! local state it describes, and deleted only after the hub acknowledged it durably.
//!
//! Bounded by coalescing: a work has at most one unacknowledged entry, because a newer status
//! of the same work replaces the older one (under a new sequence number). The latest status of
//! every work is therefore never dropped, and the outbox never holds more entries than works.

use std::time::Duration;
use tether_protocol::{StatusBatch, StatusEntry, WorkStatus};
use tether_store::agent::{OutboxMeta, CURRENT, OUTBOX, OUTBOX_BY_WORK, OUTBOX_META};
use tether_store::{ReadTx, StoreError, WriteTx};
use tether_transport::backoff::Backoff;

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

/// The hub stored everything through `through`: forget it. Returns the outbox's cursor
/// afterwards (everything through it is acknowledged), for [`Resend`] to judge progress.
pub fn acknowledge(tx: &WriteTx, through: u64) -> Result<u64, StoreError> {
    let mut m = meta(tx)?;
    if through <= m.acked_through {
        return Ok(m.acked_through);
    }
    if through >= m.next_seq {
        // The hub claims more than we ever sent (its cursor may be from an earlier identity of
        // this cluster): refuse to lose anything over it. `Resend` logs it once.
        tracing::debug!(
            through,
            next = m.next_seq,
            "hub acknowledged status entries this agent never sent; ignoring"
        );
        return Ok(m.acked_through);
    }
    for (seq, status) in tx_range_through(tx, m.acked_through + 1, through)? {
        if tx.get(&OUTBOX_BY_WORK, &status.work)? == Some(seq) {
            tx.remove(&OUTBOX_BY_WORK, &status.work)?;
        }
    }
    tx.remove_through(&OUTBOX, through)?;
    m.acked_through = through;
    tx.put(&OUTBOX_META, CURRENT, &m)?;
    Ok(through)
}

/// First and longest wait before resending a batch the hub did not retire.
pub const RESEND_BASE: Duration = Duration::from_millis(500);
pub const RESEND_CAP: Duration = Duration::from_secs(60);

/// Paces resends of a batch the hub answered without retiring it. Such an answer comes back
/// at once, so resending right away spun (about 890 batches a second, each with a warning,
/// when the hub held cursors from before the agent's store was wiped and dropped every new
/// status as a duplicate). Waits grow exponentially with jitter up to [`RESEND_CAP`]; the
/// episode is logged once when it starts and once when it ends. Pure: the draw is an input.
#[derive(Debug, Clone)]
pub struct Resend {
    backoff: Backoff,
    stalled: bool,
}

impl Default for Resend {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(RESEND_BASE, RESEND_CAP),
            stalled: false,
        }
    }
}

impl Resend {
    /// After a batch ending at `to_seq` was answered with `through`, leaving the outbox cursor
    /// at `acked`: how long to wait before sending again (`None`: at once). `unit` is a uniform
    /// draw from `[0, 1)`.
    pub fn after_ack(
        &mut self,
        to_seq: u64,
        through: u64,
        acked: u64,
        unit: f64,
    ) -> Option<Duration> {
        if acked >= to_seq {
            if self.stalled {
                tracing::info!(acked, "the hub acknowledges status batches again");
            }
            self.stalled = false;
            self.backoff.reset();
            return None;
        }
        if !self.stalled {
            tracing::warn!(
                sent_through = to_seq,
                hub_through = through,
                acked,
                "the hub did not acknowledge the status batch it was sent (it may hold cursors from an earlier identity of this cluster); resending with backoff"
            );
            self.stalled = true;
        }
        // Equal jitter: never less than half the window, so no draw can make it spin.
        let window = self.backoff.current_window();
        self.backoff.next_delay(0.0);
        Some(window / 2 + window.mul_f64(unit.clamp(0.0, 1.0) / 2.0))
    }

    /// The hub answered `Busy` (its status budget for this cluster is spent): the same
    /// pacing, so that the session is kept instead of ending on it.
    pub fn busy(&mut self, why: &str, unit: f64) -> Duration {
        if !self.stalled {
            tracing::warn!(
                reason = why,
                "the hub is busy with this agent's status; resending with backoff"
            );
            self.stalled = true;
        }
        let window = self.backoff.current_window();
        self.backoff.next_delay(0.0);
        window / 2 + window.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    pub fn stalled(&self) -> bool {
        self.stalled
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_the_hub_does_not_retire_is_resent_with_growing_bounded_waits() {
        let mut r = Resend::default();
        // The hub's cursor is above anything this agent sent (an earlier identity's): the
        // outbox ignores it, so its own cursor stays at 0 while batch 1..=3 stays unsent.
        let mut waits = Vec::new();
        for _ in 0..12 {
            waits.push(r.after_ack(3, 500, 0, 0.0).expect("must wait"));
        }
        assert!(r.stalled());
        assert!(waits[0] >= RESEND_BASE / 2, "{waits:?}");
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(waits[11] > waits[0] * 8, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= RESEND_CAP), "{waits:?}");
        // Busy grows the same window.
        let mut r = Resend::default();
        assert_eq!(r.busy("budget", 0.0), RESEND_BASE / 2);
        assert_eq!(r.busy("budget", 0.0), RESEND_BASE);
        assert!(r.stalled());
        // The hub's cursor below what was sent waits too.
        let mut r = Resend::default();
        assert!(r.after_ack(10, 4, 4, 0.99).is_some());
        // Progress ends the episode and the backoff.
        assert_eq!(r.after_ack(10, 10, 10, 0.5), None);
        assert!(!r.stalled());
        let first = r.after_ack(12, 11, 11, 0.0).expect("must wait");
        assert_eq!(first, RESEND_BASE / 2);
    }

    #[test]
    fn acknowledge_reports_where_the_cursor_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = tether_store::Store::open(dir.path().join("a.redb")).unwrap();
        let status = |work: &str| WorkStatus {
            work: work.into(),
            generation: 1,
            hash: String::new(),
            phase: tether_protocol::WorkPhase::Applied,
            conditions: Vec::new(),
            resources: Vec::new(),
            message: String::new(),
            observed_at_ms: 0,
        };
        store
            .write(|tx| {
                record(tx, &status("a"))?;
                record(tx, &status("b"))
            })
            .unwrap();
        // Beyond what was sent: ignored, the cursor stays.
        assert_eq!(store.write(|tx| acknowledge(tx, 500)).unwrap(), 0);
        assert_eq!(store.write(|tx| acknowledge(tx, 1)).unwrap(), 1);
        // Below the cursor: unchanged.
        assert_eq!(store.write(|tx| acknowledge(tx, 0)).unwrap(), 1);
        assert_eq!(store.write(|tx| acknowledge(tx, 2)).unwrap(), 2);
    }
}
