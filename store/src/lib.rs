//! Typed redb tables. One database file per process; values are CBOR through the protocol codec.
//!
//! Durability rule: [`Store::write`] commits with `Durability::Immediate` (fsync) before it
//! returns, so anything the caller tells a peer after `write` returns survives a crash.

#![forbid(unsafe_code)]

pub mod agent;
pub mod hub;
mod table;

pub use table::{ReadTx, SeqTable, StrTable, WriteTx};

use redb::{Database, Durability, ReadableDatabase};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("database {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("could not encode record for table {table}: {detail}")]
    Encode { table: &'static str, detail: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open or create the database at `path`; the file is made owner-only (it may hold keys).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        restrict_permissions(&path)?;
        Ok(Self { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in a write transaction and commit durably. If `f` fails nothing is written.
    pub fn write<R, E>(&self, f: impl FnOnce(&WriteTx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        txn.set_durability(Durability::Immediate)
            .map_err(StoreError::from)?;
        let tx = WriteTx::new(txn);
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn read<R, E>(&self, f: impl FnOnce(&ReadTx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let txn = self.db.begin_read().map_err(StoreError::from)?;
        f(&ReadTx::new(txn))
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
