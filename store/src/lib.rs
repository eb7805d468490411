//! Typed tables on redb (the agent, and the hub by default: one database file per process) or,
//! for the hub, on PostgreSQL (`pg.rs`, feature `postgres`). Values are CBOR through the
//! protocol codec; code above this crate cannot tell the engines apart.
//!
//! Durability rule: [`Store::write`] commits durably (redb: `Durability::Immediate`, fsync;
//! PostgreSQL: a synchronous commit) before it returns, so anything the caller tells a peer
//! after `write` returns survives a crash.

#![forbid(unsafe_code)]

pub mod agent;
pub mod hub;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "postgres")]
mod pg_tls;
mod table;

#[cfg(feature = "postgres")]
pub use pg::{redact, Change, Doorbell, Lease, SCHEMA_VERSION};

pub use table::{OpenSeqTable, OpenStrTable, ReadTx, SeqTable, StrTable, WriteTx};

use redb::{Database, Durability, ReadableDatabase};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("database {path} is in use by another process")]
    Locked { path: PathBuf },
    /// `open_existing` found no database, or an empty file where one should be. Creating a new
    /// one here would start an empty hub that refuses every agent of the fleet.
    #[error("no database at {path} ({why}); restore it from a backup, or create one with `init`")]
    Missing { path: PathBuf, why: &'static str },
    /// The file failed redb's integrity check (or redb panicked reading it) and could not be
    /// repaired.
    #[error("database {path} is damaged and could not be repaired: {detail}")]
    Damaged { path: PathBuf, detail: String },
    /// An earlier I/O error (disk full, failing disk) closed the database; it is reopened on a
    /// later call, at most once per `REOPEN_AFTER`. Retry later.
    #[error("database {path} is unavailable since an I/O error: {cause}")]
    Unavailable { path: PathBuf, cause: String },
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("could not encode record for table {table}: {detail}")]
    Encode { table: &'static str, detail: String },
    /// Compaction refused (a transaction or savepoint still open); nothing was changed.
    #[error("could not compact database {path}: {detail}")]
    Compaction { path: PathBuf, detail: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PostgreSQL {database}: {detail}")]
    Postgres {
        database: String,
        detail: String,
        /// The server or the connection failed, not the statement: the same call may work later.
        retryable: bool,
    },
    /// `serve` on a database that `init` never prepared.
    #[error("PostgreSQL {database} holds no Tether hub (no tether_schema table); create it with `tether-hub init --store ...`")]
    MissingSchema { database: String },
    #[error("PostgreSQL {database} has schema version {found}, newer than this tether-hub knows ({known}); run a tether-hub at least as new as the one that wrote it")]
    SchemaTooNew {
        database: String,
        found: i32,
        known: i32,
    },
    /// This process lost the serving lease: another hub serves the database now.
    #[error("PostgreSQL {database}: this hub no longer holds the serving lease (epoch {epoch}); another hub took over")]
    Fenced { database: String, epoch: i64 },
    /// What only the embedded store does (file snapshots, compaction).
    #[error("{what} is not available on a PostgreSQL store: {instead}")]
    Unsupported {
        what: &'static str,
        instead: &'static str,
    },
}

impl StoreError {
    /// The operation may succeed later with the same input (the disk, not the data, failed).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } | StoreError::Locked { .. } | StoreError::Io { .. } => {
                true
            }
            StoreError::Postgres { retryable, .. } => *retryable,
            StoreError::Db(e) => matches!(
                e,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
            ),
            _ => false,
        }
    }

    /// The database handle cannot be trusted any more and must be closed and reopened.
    fn poisons(&self) -> bool {
        match self {
            StoreError::Db(e) => matches!(
                e,
                redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::DatabaseClosed
                    | redb::Error::Corrupted(_)
                    | redb::Error::LockPoisoned(_)
            ),
            StoreError::Damaged { .. } => true,
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// How long a closed database waits before the next call tries to reopen it: a full disk is not
/// freed in microseconds, and each attempt reads the whole file.
pub const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Why the store is failing, for health endpoints, conditions and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    /// Unix ms of the first failure of this episode.
    pub since_ms: u64,
    pub error: String,
}

#[derive(Default)]
struct Health {
    failure: Option<StoreFailure>,
    closed_at: Option<Instant>,
}

/// A redb database that survives its own failures: panics inside redb become typed errors, and
/// an I/O error closes the handle (redb refuses every later operation with `PreviousIo` until
/// it is reopened) so that a later call reopens it once the disk is usable again.
pub struct Store {
    db: RwLock<Option<Database>>,
    path: PathBuf,
    health: Mutex<Health>,
    /// Failures since open, for metrics.
    failures: AtomicU64,
    /// The hub's tables in PostgreSQL instead; `db` is never opened then.
    #[cfg(feature = "postgres")]
    pg: Option<pg::PgStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Open with redb's full integrity check (a plain open of an altered file may panic), inside a
/// panic guard.
fn open_checked(path: &Path, create: bool) -> Result<Database, StoreError> {
    let opened = std::panic::catch_unwind(|| {
        let mut b = Database::builder();
        b.set_check_integrity_on_open(true);
        if create {
            b.create(path)
        } else {
            b.open(path)
        }
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)))) => {
            Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            })
        }
        Ok(Err(source)) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source,
        }),
        Err(p) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("redb panicked opening it: {}", panic_text(p.as_ref())),
        }),
    }
}

impl Store {
    /// Open or create the database at `path`; the file is made owner-only (it may hold keys).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), true)
    }

    /// Open a database that must exist and hold data: a missing or empty file is an error,
    /// never a fresh database.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let why = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("the file does not exist"),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Ok(m) if m.len() == 0 => Some("the file is empty"),
            Ok(_) => None,
        };
        if let Some(why) = why {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
                why,
            });
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Self, StoreError> {
        let db = open_checked(path, create)?;
        restrict_permissions(path)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            health: Mutex::new(Health::default()),
            failures: AtomicU64::new(0),
            #[cfg(feature = "postgres")]
            pg: None,
        })
    }

    /// The hub's store in the PostgreSQL database at `url` (`postgres://...` or `key=value`).
    /// `create` (init) prepares an empty database; otherwise its schema must exist, and newer
    /// migrations are applied.
    #[cfg(feature = "postgres")]
    pub fn open_postgres(url: &str, create: bool) -> Result<Self, StoreError> {
        let pg = pg::PgStore::open(url, create)?;
        Ok(Self {
            db: RwLock::new(None),
            path: PathBuf::from(pg.label.to_string()),
            health: Mutex::new(Health::default()),
            failures: AtomicU64::new(0),
            pg: Some(pg),
        })
    }

    /// Whether this is the embedded (redb) store: file snapshots and compaction exist only there.
    pub fn is_embedded(&self) -> bool {
        #[cfg(feature = "postgres")]
        if self.pg.is_some() {
            return false;
        }
        true
    }

    /// Change-feed entries after `after` (PostgreSQL only; see `pg.rs`).
    #[cfg(feature = "postgres")]
    pub fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        self.pg()?.changes_since(after, limit)
    }

    /// The newest change id (0 when the feed is empty).
    #[cfg(feature = "postgres")]
    pub fn changes_head(&self) -> Result<i64, StoreError> {
        self.pg()?.changes_head()
    }

    /// The oldest change id still held, if any.
    #[cfg(feature = "postgres")]
    pub fn changes_horizon(&self) -> Result<Option<i64>, StoreError> {
        self.pg()?.changes_horizon()
    }

    /// Forget change-feed entries older than `age`; returns how many.
    #[cfg(feature = "postgres")]
    pub fn prune_changes_older_than(&self, age: Duration) -> Result<u64, StoreError> {
        self.pg()?.prune_changes_older_than(age)
    }

    /// Forget change-feed entries through `through`; returns how many.
    #[cfg(feature = "postgres")]
    pub fn prune_changes(&self, through: i64) -> Result<u64, StoreError> {
        self.pg()?.prune_changes(through)
    }

    /// Take the serving lease (see `pg.rs`); `None` while another hub holds it.
    #[cfg(feature = "postgres")]
    pub fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        self.pg()?.acquire_lease(holder, ttl)
    }

    /// Extend the lease; `false` once it is lost.
    #[cfg(feature = "postgres")]
    pub fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.pg()?.renew_lease(lease, ttl)
    }

    /// Give the lease up at once (a clean stop).
    #[cfg(feature = "postgres")]
    pub fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.pg()?.release_lease(lease)
    }

    /// Every later write transaction checks `lease` in the same transaction, and fails with
    /// [`StoreError::Fenced`] once another process took it.
    #[cfg(feature = "postgres")]
    pub fn fence_writes(&self, lease: &Lease) -> Result<(), StoreError> {
        self.pg()?.fence_writes(lease);
        Ok(())
    }

    /// Name the changes this process records, so that it can skip its own when it follows
    /// the feed.
    #[cfg(feature = "postgres")]
    pub fn set_origin(&self, name: &str) -> Result<(), StoreError> {
        self.pg()?.set_origin(name);
        Ok(())
    }

    /// Say that replica `name` is alive for `ttl` more.
    #[cfg(feature = "postgres")]
    pub fn beat_replica(&self, name: &str, ttl: Duration) -> Result<(), StoreError> {
        self.pg()?.beat_replica(name, ttl)
    }

    /// The replicas alive now.
    #[cfg(feature = "postgres")]
    pub fn live_replicas(&self) -> Result<Vec<String>, StoreError> {
        self.pg()?.live_replicas()
    }

    /// Forget replica `name` at once (a clean stop).
    #[cfg(feature = "postgres")]
    pub fn drop_replica(&self, name: &str) -> Result<(), StoreError> {
        self.pg()?.drop_replica(name)
    }

    /// A connection that hears commits to the change feed.
    #[cfg(feature = "postgres")]
    pub fn doorbell(&self) -> Result<Doorbell, StoreError> {
        self.pg()?.doorbell()
    }

    #[cfg(feature = "postgres")]
    fn pg(&self) -> Result<&pg::PgStore, StoreError> {
        self.pg.as_ref().ok_or(StoreError::Unsupported {
            what: "the change feed and the serving lease",
            instead: "one embedded store serves one hub process",
        })
    }

    /// Run a PostgreSQL operation with the same failure bookkeeping as redb's.
    #[cfg(feature = "postgres")]
    fn pg_guarded<R, E>(&self, op: impl FnOnce() -> Result<R, Outcome<E>>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        match op() {
            Ok(v) => {
                self.recovered();
                Ok(v)
            }
            Err(Outcome::Caller(e)) => Err(e),
            Err(Outcome::Store(e)) => {
                if e.is_retryable() {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                    h.failure.get_or_insert_with(|| StoreFailure {
                        since_ms: now_ms(),
                        error: e.to_string(),
                    });
                    tracing::error!(error = %e, "database failed");
                }
                Err(E::from(e))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the space of deleted data back to the file system (redb reuses freed pages but
    /// never shrinks the file by itself). Waits for transactions of this handle to end and
    /// blocks new ones meanwhile, so call it where a pause is fine: at start. Returns the file
    /// size before and after.
    pub fn compact(&self) -> Result<(u64, u64), StoreError> {
        if !self.is_embedded() {
            return Err(StoreError::Unsupported {
                what: "compaction",
                instead: "PostgreSQL's autovacuum gives space back",
            });
        }
        let len = || {
            std::fs::metadata(&self.path)
                .map(|m| m.len())
                .map_err(|source| StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
        };
        let before = len()?;
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_mut() else {
            return Err(self.unavailable());
        };
        match db.compact() {
            Ok(_) => {}
            Err(redb::CompactionError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                return Err(StoreError::Compaction {
                    path: self.path.clone(),
                    detail: e.to_string(),
                })
            }
        }
        drop(guard);
        Ok((before, len()?))
    }

    /// `Some` while the last operation failed on the disk or the database (not on bad input).
    pub fn failure(&self) -> Option<StoreFailure> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure
            .clone()
    }

    /// Failed operations since open (I/O errors, damage, panics).
    pub fn failures_total(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Run `f` in a write transaction and commit durably. If `f` fails nothing is written.
    pub fn write<R, E>(&self, f: impl FnOnce(&WriteTx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return self.pg_guarded(|| pg.write(f));
        }
        self.guarded(|db| {
            let mut txn = db.begin_write().map_err(StoreError::from)?;
            txn.set_durability(Durability::Immediate)
                .map_err(StoreError::from)?;
            let tx = WriteTx::new(txn);
            let out = f(&tx).map_err(Outcome::Caller)?;
            tx.commit()?;
            Ok(out)
        })
    }

    pub fn read<R, E>(&self, f: impl FnOnce(&ReadTx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return self.pg_guarded(|| pg.read(f));
        }
        self.guarded(|db| {
            let txn = db.begin_read().map_err(StoreError::from)?;
            f(&ReadTx::new(txn)).map_err(Outcome::Caller)
        })
    }

    /// Run `op` on the open database, reopening it first if an earlier failure closed it;
    /// panics become `Damaged`, and failures of the disk close the handle.
    fn guarded<R, E>(&self, op: impl FnOnce(&Database) -> Result<R, Outcome<E>>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        self.reopen_if_closed().map_err(E::from)?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(E::from(self.unavailable()));
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(db)));
        drop(guard);
        let err = match result {
            Ok(Ok(v)) => {
                self.recovered();
                return Ok(v);
            }
            Ok(Err(Outcome::Caller(e))) => return Err(e),
            Ok(Err(Outcome::Store(e))) => e,
            Err(p) => StoreError::Damaged {
                path: self.path.clone(),
                detail: format!("redb panicked: {}", panic_text(p.as_ref())),
            },
        };
        if err.poisons() {
            self.close_after(&err);
        }
        Err(E::from(err))
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable {
            path: self.path.clone(),
            cause: self
                .failure()
                .map(|f| f.error)
                .unwrap_or_else(|| "closed".into()),
        }
    }

    fn recovered(&self) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.failure.take().is_some() {
            tracing::warn!(path = %self.path.display(), "database works again");
        }
    }

    fn close_after(&self, err: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %self.path.display(), error = %err, "database failed; closing it, to reopen on a later call");
        {
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            h.failure.get_or_insert_with(|| StoreFailure {
                since_ms: now_ms(),
                error: err.to_string(),
            });
            h.closed_at = Some(Instant::now());
        }
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(db) = old {
            // Releases the file lock now, so that the reopen is not refused as "already open".
            if let Err(e) = db.close() {
                tracing::warn!(path = %self.path.display(), error = %e, "closing the failed database");
            }
        }
    }

    fn reopen_if_closed(&self) -> Result<(), StoreError> {
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        {
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.closed_at.is_some_and(|t| t.elapsed() < REOPEN_AFTER) {
                drop(h);
                return Err(self.unavailable());
            }
            h.closed_at = Some(Instant::now());
        }
        match open_checked(&self.path, false) {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "database reopened after a failure");
                *slot = Some(db);
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(f) = h.failure.as_mut() {
                    f.error = e.to_string();
                }
                Err(StoreError::Unavailable {
                    path: self.path.clone(),
                    cause: e.to_string(),
                })
            }
        }
    }
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Rows of every table as of one read transaction, written into a new database at `to`.
/// Every table of ours is `&str -> bytes` or `u64 -> bytes`; a table of another shape is an
/// error, not silently skipped.
fn copy_tables(
    txn: &redb::ReadTransaction,
    out: &redb::WriteTransaction,
) -> Result<(usize, u64), StoreError> {
    use redb::{ReadableTable, TableDefinition, TableHandle};
    let mut tables = 0;
    let mut rows = 0u64;
    for handle in txn.list_tables().map_err(StoreError::from)? {
        let name = handle.name().to_string();
        let str_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
        match txn.open_table(str_def) {
            Ok(t) => {
                let mut dst = out.open_table(str_def)?;
                for row in t.iter().map_err(StoreError::from)? {
                    let (k, v) = row.map_err(StoreError::from)?;
                    dst.insert(k.value(), v.value())?;
                    rows += 1;
                }
            }
            Err(redb::TableError::TableTypeMismatch { .. }) => {
                let seq_def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
                let t = txn.open_table(seq_def)?;
                let mut dst = out.open_table(seq_def)?;
                for row in t.iter().map_err(StoreError::from)? {
                    let (k, v) = row.map_err(StoreError::from)?;
                    dst.insert(k.value(), v.value())?;
                    rows += 1;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tables += 1;
    }
    Ok((tables, rows))
}

impl Store {
    /// Write a consistent copy of the whole database to `to`, a path that must not exist, while
    /// the database stays in use (one read transaction: writers are not blocked). The copy is
    /// fsynced before this returns; its file is owner-only.
    pub fn snapshot_to(&self, to: &Path) -> Result<SnapshotInfo, StoreError> {
        if !self.is_embedded() {
            return Err(StoreError::Unsupported {
                what: "a file snapshot",
                instead: "back PostgreSQL up with its own tools (pg_basebackup, pg_dump, or your provider's)",
            });
        }
        let io = |source| StoreError::Io {
            path: to.to_path_buf(),
            source,
        };
        // create_new: never overwrite an older backup, or the live database, by mistake.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(to)
            .map_err(io)?;
        drop(file);
        let result = self.guarded(|db| {
            let txn = db.begin_read().map_err(StoreError::from)?;
            // Failures past here are the copy's (often its disk's): they must not close the
            // live database, so they come back as the caller's.
            let copy = || {
                let copy = Database::create(to).map_err(|source| StoreError::Open {
                    path: to.to_path_buf(),
                    source,
                })?;
                let mut out = copy.begin_write()?;
                out.set_durability(Durability::Immediate)?;
                let counts = copy_tables(&txn, &out)?;
                out.commit()?;
                Ok::<_, StoreError>(counts)
            };
            copy().map_err(Outcome::Caller)
        });
        let (tables, rows) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(to);
                return Err(e);
            }
        };
        restrict_permissions(to)?;
        let bytes = std::fs::metadata(to).map_err(io)?.len();
        Ok(SnapshotInfo {
            tables,
            rows,
            bytes,
        })
    }
}

/// What failed inside a guarded operation: the caller's closure (returned as is) or the store.
pub(crate) enum Outcome<E> {
    Caller(E),
    Store(StoreError),
}

impl<E> From<StoreError> for Outcome<E> {
    fn from(e: StoreError) -> Self {
        Outcome::Store(e)
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: StrTable<String> = StrTable::new("t");
    const LOG: SeqTable<String> = SeqTable::new("log");

    #[test]
    fn compaction_gives_deleted_space_back_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("x.redb")).unwrap();
        let big = "x".repeat(64 * 1024);
        for i in 0..200 {
            s.write(|tx| tx.put(&T, &format!("big/{i:03}"), &big))
                .unwrap();
        }
        s.write(|tx| tx.put(&T, "keep", &"kept".to_string()))
            .unwrap();
        s.write(|tx| tx.remove_prefix(&T, "big/")).unwrap();
        let (before, after) = s.compact().unwrap();
        assert!(before > 10 << 20, "{before}");
        assert!(after < before / 4, "{before} -> {after}");
        assert_eq!(
            s.read(|tx| tx.get(&T, "keep")).unwrap().as_deref(),
            Some("kept")
        );
        s.write(|tx| tx.put(&T, "after", &"ok".to_string()))
            .unwrap();
    }

    /// An open table reads its own writes, its writes commit with the transaction (or not at
    /// all), and the table is free again once it is dropped.
    #[test]
    fn an_open_table_is_part_of_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("x.redb")).unwrap();
        s.write(|tx| {
            {
                let mut t = tx.open(&T)?;
                for k in ["a/01", "a/02", "a/03", "b/01"] {
                    t.put(k, &k.to_string())?;
                }
                assert_eq!(t.get("a/02")?.as_deref(), Some("a/02"));
                assert_eq!(t.remove_range("a/", "a/02")?, 2);
                assert_eq!(t.get("a/01")?, None);
            }
            assert_eq!(tx.count(&T)?, 2);
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let failed: Result<(), StoreError> = s.write(|tx| {
            tx.open(&T)?.put("c/01", &"lost".to_string())?;
            Err(StoreError::Corrupt {
                table: "t",
                detail: "abort".into(),
            })
        });
        assert!(failed.is_err());
        let keys: Vec<String> = s
            .read(|tx| tx.list(&T))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/03", "b/01"]);
    }

    #[test]
    fn remove_range_is_inclusive_and_stays_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("x.redb")).unwrap();
        let keys = ["a/01", "a/02", "a/03", "a/04", "ab/01", "b/01"];
        let (removed, left) = s
            .write(|tx| {
                for k in keys {
                    tx.put(&T, k, &k.to_string())?;
                }
                let removed = tx.remove_range(&T, "a/", "a/02")?;
                let left: Vec<String> = tx.list(&T)?.into_iter().map(|(k, _)| k).collect();
                Ok::<_, StoreError>((removed, left))
            })
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(left, ["a/03", "a/04", "ab/01", "b/01"]);
    }

    #[test]
    fn write_read_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        {
            let s = Store::open(&path).unwrap();
            s.write(|tx| {
                tx.put(&T, "a", &"1".to_string())?;
                tx.append(&LOG, &"e1".to_string())?;
                tx.append(&LOG, &"e2".to_string())?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
            // A failed closure writes nothing.
            let r: Result<(), StoreError> = s.write(|tx| {
                tx.put(&T, "b", &"2".to_string())?;
                Err(StoreError::Corrupt {
                    table: "t",
                    detail: "boom".into(),
                })
            });
            assert!(r.is_err());
        }
        let s = Store::open(&path).unwrap();
        let (a, b, log) = s
            .read(|tx| {
                Ok::<_, StoreError>((tx.get(&T, "a")?, tx.get(&T, "b")?, tx.tail(&LOG, 10)?))
            })
            .unwrap();
        assert_eq!(a.as_deref(), Some("1"));
        assert_eq!(b, None);
        assert_eq!(log, vec![(1, "e1".to_string()), (2, "e2".to_string())]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_panic_inside_a_transaction_is_a_typed_error_and_the_store_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("p.redb")).unwrap();
        s.write(|tx| tx.put(&T, "a", &"1".to_string())).unwrap();
        let r: Result<(), StoreError> = s.write(|_tx| panic!("page index out of range"));
        assert!(matches!(r, Err(StoreError::Damaged { .. })), "{r:?}");
        assert!(s.failure().is_some());
        let r = s.read(|tx| tx.get(&T, "a"));
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
        std::thread::sleep(REOPEN_AFTER);
        let a = s.read(|tx| tx.get(&T, "a")).unwrap();
        assert_eq!(a.as_deref(), Some("1"));
        assert_eq!(s.failure(), None);
        assert_eq!(s.failures_total(), 1);
    }

    #[test]
    fn damaged_and_missing_files_are_refused_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        {
            let s = Store::open(&path).unwrap();
            for i in 0..200 {
                s.write(|tx| tx.put(&T, &format!("k{i}"), &"v".repeat(100)))
                    .unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mut x: u32 = 12345;
        for b in bytes.iter_mut().skip(4096) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| Store::open_existing(&path).map(|_| ()));
        let r = r.expect("opening a damaged file panicked");
        assert!(r.is_err(), "a randomised file opened");
        let missing = Store::open_existing(dir.path().join("none.redb")).unwrap_err();
        assert!(matches!(missing, StoreError::Missing { .. }), "{missing}");
        assert!(!dir.path().join("none.redb").exists());
    }

    #[test]
    fn a_snapshot_holds_every_table_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("live.redb")).unwrap();
        s.write(|tx| {
            tx.put(&T, "a", &"1".to_string())?;
            tx.append(&LOG, &"e1".to_string())
        })
        .unwrap();
        let to = dir.path().join("backup.redb");
        let info = s.snapshot_to(&to).unwrap();
        assert_eq!((info.tables, info.rows), (2, 2));
        // The live store keeps working, and the copy is a store of its own.
        s.write(|tx| tx.put(&T, "b", &"2".to_string())).unwrap();
        let copy = Store::open_existing(&to).unwrap();
        let (a, b, log) = copy
            .read(|tx| Ok::<_, StoreError>((tx.get(&T, "a")?, tx.get(&T, "b")?, tx.tail(&LOG, 5)?)))
            .unwrap();
        assert_eq!((a.as_deref(), b), (Some("1"), None));
        assert_eq!(log, vec![(1, "e1".to_string())]);
        drop(copy);
        let again = s.snapshot_to(&to).unwrap_err();
        assert!(matches!(again, StoreError::Io { .. }), "{again}");
    }

    #[test]
    fn reads_of_missing_tables_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("y.redb")).unwrap();
        let rows = s.read(|tx| tx.list(&T)).unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn corrupt_value_is_a_typed_error() {
        const RAW: StrTable<Vec<u8>> = StrTable::new("t");
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("z.redb")).unwrap();
        // Store a CBOR byte string, read it back as a text string.
        s.write(|tx| tx.put(&RAW, "k", &vec![0xffu8; 3])).unwrap();
        let err = s.read(|tx| tx.get(&T, "k")).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
