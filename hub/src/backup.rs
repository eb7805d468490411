//! Backups of the hub database while it serves, and restoring one.
//!
//! A backup is a consistent snapshot (one read transaction) written as a database of its own,
//! marked with when it was taken. Restoring swaps it in for `hub.redb` while the hub is stopped;
//! the old file is kept beside it. What a restored hub cannot know (see docs/recovery.md):
//! works, joins and revocations after the backup. Agents keep works the hub does not know.

use crate::api::BackupInfo;
use std::path::{Path, PathBuf};
use tether_store::hub::{ClusterState, ADMINS, AUDIT, BACKUP_META, CLUSTERS, REVOKED, WORKS};
use tether_store::{SnapshotInfo, Store, StoreError};

const TAKEN_AT: &str = "taken_at_ms";

/// Snapshot `store` into `to` (which must not exist) and mark the copy as a backup.
pub fn write_backup(store: &Store, to: &Path, now_ms: u64) -> Result<BackupInfo, StoreError> {
    let SnapshotInfo {
        tables,
        rows,
        bytes,
    } = store.snapshot_to(to)?;
    let marked = Store::open_existing(to)
        .and_then(|copy| copy.write(|tx| tx.put(&BACKUP_META, TAKEN_AT, &now_ms)));
    if let Err(e) = marked {
        let _ = std::fs::remove_file(to);
        return Err(e);
    }
    Ok(BackupInfo {
        path: to.display().to_string(),
        taken_at_ms: now_ms,
        tables,
        rows,
        bytes,
    })
}

/// At start: when the database is a restored backup, when that backup was taken. The mark is
/// removed (and the restore audited) in the same transaction, so it is reported once.
pub(crate) fn take_restore_mark(store: &Store, now_ms: u64) -> Result<Option<u64>, StoreError> {
    store.write(|tx| {
        let Some(taken) = tx.get(&BACKUP_META, TAKEN_AT)? else {
            return Ok(None);
        };
        tx.remove(&BACKUP_META, TAKEN_AT)?;
        tx.append(
            &AUDIT,
            &tether_store::hub::AuditEvent {
                at_ms: now_ms,
                kind: "restored_from_backup".into(),
                cluster: None,
                actor: "hub".into(),
                detail: format!(
                    "database restored from a backup taken at {}",
                    crate::util::rfc3339(taken)
                ),
            },
        )?;
        Ok(Some(taken))
    })
}

#[derive(Debug)]
pub struct RestoreReport {
    pub taken_at_ms: u64,
    pub clusters: usize,
    pub works: usize,
    /// Where the database it replaced was moved, if there was one.
    pub replaced: Option<PathBuf>,
    /// Revocations (and denials) the replaced database had and the backup did not, carried
    /// over: restoring must not make a revoked certificate valid again.
    pub revocations_kept: usize,
    pub denials_kept: usize,
}

/// Copy into `restored` every revoked serial and denial of `old` that it lacks.
fn keep_revocations(old: &Store, restored: &Store) -> Result<(usize, usize), StoreError> {
    let (revoked, clusters) =
        old.read(|tx| Ok::<_, StoreError>((tx.list(&REVOKED)?, tx.list(&CLUSTERS)?)))?;
    restored.write(|tx| {
        let mut serials = 0;
        for (serial, rec) in &revoked {
            if tx.get(&REVOKED, serial)?.is_none() {
                tx.put(&REVOKED, serial, rec)?;
                serials += 1;
            }
        }
        let mut denials = 0;
        for (name, old_rec) in &clusters {
            if old_rec.state != ClusterState::Denied {
                continue;
            }
            if let Some(mut rec) = tx.get(&CLUSTERS, name)? {
                if rec.state != ClusterState::Denied {
                    rec.state = ClusterState::Denied;
                    rec.state_since_ms = old_rec.state_since_ms;
                    tx.put(&CLUSTERS, name, &rec)?;
                    denials += 1;
                }
            }
        }
        Ok((serials, denials))
    })
}

/// Put the backup at `from` in place of `database` (the hub must be stopped).
pub fn restore(database: &Path, from: &Path, now_ms: u64) -> anyhow::Result<RestoreReport> {
    use anyhow::Context;
    // Damaged or not, the current database is replaced and kept beside the restored one; only
    // a serving hub stops the restore.
    if database.exists()
        && matches!(
            Store::open_existing(database),
            Err(StoreError::Locked { .. })
        )
    {
        anyhow::bail!(
            "{} is in use: stop `tether-hub serve` before restoring",
            database.display()
        );
    }
    let backup = Store::open_existing(from)
        .with_context(|| format!("checking the backup {}", from.display()))?;
    let (taken, admins, clusters, works) = backup.read(|tx| {
        Ok::<_, StoreError>((
            tx.get(&BACKUP_META, TAKEN_AT)?,
            tx.list(&ADMINS)?.len(),
            tx.list(&CLUSTERS)?.len(),
            tx.list(&WORKS)?.len(),
        ))
    })?;
    drop(backup);
    let taken_at_ms = taken.filter(|_| admins > 0).with_context(|| {
        format!(
            "{} is not a hub backup (no backup mark or no admin credential); make one with `tether-hub backup`",
            from.display()
        )
    })?;
    let tmp = database.with_extension("redb.restoring");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    let (revocations_kept, denials_kept) = {
        let restored = Store::open_existing(&tmp)?;
        match Store::open_existing(database) {
            Ok(old) => keep_revocations(&old, &restored).with_context(|| {
                format!("carrying revocations over from {}", database.display())
            })?,
            Err(e) => {
                // A lost or damaged database has nothing readable to carry over.
                tracing::warn!(error = %e, "the database being replaced cannot be read; revocations made after the backup are lost (deny those clusters again)");
                (0, 0)
            }
        }
    };
    let replaced = if database.exists() {
        let aside = database.with_extension(format!("redb.replaced-{now_ms}"));
        std::fs::rename(database, &aside)
            .with_context(|| format!("moving {} aside", database.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&tmp, database)
        .with_context(|| format!("moving the restored database to {}", database.display()))?;
    if let Some(dir) = database.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(RestoreReport {
        taken_at_ms,
        clusters,
        works,
        replaced,
        revocations_kept,
        denials_kept,
    })
}
