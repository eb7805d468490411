//! Typed table handles over redb tables of `key -> CBOR bytes`.

use crate::StoreError;
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;

/// A table keyed by string.
pub struct StrTable<V> {
    name: &'static str,
    _v: PhantomData<fn() -> V>,
}

/// A table keyed by a monotonically increasing sequence number (append-only logs).
pub struct SeqTable<V> {
    name: &'static str,
    _v: PhantomData<fn() -> V>,
}

impl<V> StrTable<V> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _v: PhantomData,
        }
    }

    /// The table's stored name (what the PostgreSQL change feed records).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    fn def(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

impl<V> SeqTable<V> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _v: PhantomData,
        }
    }
    fn def(&self) -> TableDefinition<'static, u64, &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

fn enc<V: Serialize>(table: &'static str, v: &V) -> Result<Vec<u8>, StoreError> {
    tether_protocol::encode(v).map_err(|e| StoreError::Encode {
        table,
        detail: e.to_string(),
    })
}

fn dec<V: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<V, StoreError> {
    tether_protocol::decode(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// The least string greater than every string starting with `prefix`, if one is easy to form.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let last = prefix.chars().last()?;
    let next = char::from_u32(u32::from(last) + 1)?;
    Some(format!(
        "{}{next}",
        &prefix[..prefix.len() - last.len_utf8()]
    ))
}

/// A write transaction of either engine. The redb code is below each method's PostgreSQL
/// early return (`pg.rs` holds that engine's statements).
pub struct WriteTx {
    txn: WriteEngine,
}

// One per transaction, never moved in a loop: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum WriteEngine {
    Redb(WriteTransaction),
    #[cfg(feature = "postgres")]
    Pg(crate::pg::WriteTx),
}

/// The PostgreSQL transaction, if that is the engine; the redb one otherwise.
macro_rules! engine {
    ($self:ident, $Engine:ident, $pg:ident => $on_pg:expr) => {
        match &$self.txn {
            $Engine::Redb(txn) => txn,
            #[cfg(feature = "postgres")]
            $Engine::Pg($pg) => {
                #[allow(unused_imports)]
                use crate::pg::Ops as _;
                return $on_pg;
            }
        }
    };
}

impl WriteTx {
    pub(crate) fn new(txn: WriteTransaction) -> Self {
        Self {
            txn: WriteEngine::Redb(txn),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg(tx: crate::pg::WriteTx) -> Self {
        Self {
            txn: WriteEngine::Pg(tx),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn into_pg(self) -> crate::pg::WriteTx {
        match self.txn {
            WriteEngine::Pg(tx) => tx,
            WriteEngine::Redb(_) => unreachable!("a redb transaction is never made a pg one"),
        }
    }

    pub(crate) fn commit(self) -> Result<(), StoreError> {
        match self.txn {
            WriteEngine::Redb(txn) => txn.commit()?,
            #[cfg(feature = "postgres")]
            WriteEngine::Pg(_) => {}
        }
        Ok(())
    }

    /// Rows this transaction is about to `get`, named by table ([`StrTable::name`]) and key.
    /// PostgreSQL reads them in one statement instead of a round trip each; redb, whose reads
    /// are local, ignores the hint.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn prefetch(&self, rows: &[(&'static str, &str)]) -> Result<(), StoreError> {
        match &self.txn {
            WriteEngine::Redb(_) => Ok(()),
            #[cfg(feature = "postgres")]
            WriteEngine::Pg(pg) => pg.prefetch(rows),
        }
    }

    /// Open `t` for several operations; see [`OpenStrTable`].
    pub fn open<V>(&self, t: &StrTable<V>) -> Result<OpenStrTable<'_, V>, StoreError> {
        let table = match &self.txn {
            WriteEngine::Redb(txn) => OpenEngine::Redb(txn.open_table(t.def())?),
            #[cfg(feature = "postgres")]
            WriteEngine::Pg(pg) => OpenEngine::Pg(pg),
        };
        Ok(OpenStrTable {
            name: t.name,
            table,
            _v: PhantomData,
        })
    }

    /// Open the log `t` to append several entries; see [`OpenSeqTable`].
    pub fn open_log<V>(&self, t: &SeqTable<V>) -> Result<OpenSeqTable<'_, V>, StoreError> {
        let table = match &self.txn {
            WriteEngine::Redb(txn) => OpenLogEngine::Redb {
                table: txn.open_table(t.def())?,
                next: None,
            },
            #[cfg(feature = "postgres")]
            WriteEngine::Pg(pg) => OpenLogEngine::Pg(pg),
        };
        Ok(OpenSeqTable {
            name: t.name,
            table,
            _v: PhantomData,
        })
    }

    pub fn get<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
        key: &str,
    ) -> Result<Option<V>, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.get(t.name, key)?.map(|v| dec(t.name, &v)).transpose());
        let table = txn.open_table(t.def())?;
        let value = table.get(key)?;
        value.map(|v| dec(t.name, v.value())).transpose()
    }

    pub fn put<V: Serialize>(
        &self,
        t: &StrTable<V>,
        key: &str,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = enc(t.name, value)?;
        let txn = engine!(self, WriteEngine, pg => pg.put(t.name, key, &bytes));
        let mut table = txn.open_table(t.def())?;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Remove a key; returns whether it existed.
    pub fn remove<V>(&self, t: &StrTable<V>, key: &str) -> Result<bool, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.remove(t.name, key));
        let mut table = txn.open_table(t.def())?;
        let existed = table.remove(key)?.is_some();
        Ok(existed)
    }

    pub fn list<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let txn = engine!(self, WriteEngine, pg => decode_rows(t.name, pg.list(t.name)?));
        let table = txn.open_table(t.def())?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    pub fn count<V>(&self, t: &StrTable<V>) -> Result<u64, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.count(t.name));
        let table = txn.open_table(t.def())?;
        Ok(table.len()?)
    }

    /// Rows whose key starts with `prefix`, in key order.
    pub fn list_prefix<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let txn =
            engine!(self, WriteEngine, pg => decode_rows(t.name, pg.list_prefix(t.name, prefix)?));
        let table = txn.open_table(t.def())?;
        let mut out = Vec::new();
        for row in table.range(prefix..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    /// Remove every row whose key starts with `prefix`; returns how many.
    pub fn remove_prefix<V>(&self, t: &StrTable<V>, prefix: &str) -> Result<u64, StoreError> {
        self.remove_prefix_except_newest(t, prefix, 0)
    }

    /// Keep the `keep` rows with the greatest keys starting with `prefix` and remove the rest
    /// (oldest first, for keys that sort by age); returns how many were removed. Reads keys
    /// only, newest first, so the cost is `keep` plus what is removed.
    pub fn remove_prefix_except_newest<V>(
        &self,
        t: &StrTable<V>,
        prefix: &str,
        keep: usize,
    ) -> Result<u64, StoreError> {
        let txn =
            engine!(self, WriteEngine, pg => pg.remove_prefix_except_newest(t.name, prefix, keep));
        let mut table = txn.open_table(t.def())?;
        let doomed: Vec<String> = {
            let mut doomed = Vec::new();
            let rows = match prefix_end(prefix) {
                Some(end) => table.range::<&str>(prefix..end.as_str())?,
                None => table.range::<&str>(prefix..)?,
            };
            for row in rows.rev().skip(keep) {
                let (k, _) = row?;
                if k.value().starts_with(prefix) {
                    doomed.push(k.value().to_string());
                }
            }
            doomed
        };
        for k in &doomed {
            table.remove(k.as_str())?;
        }
        Ok(doomed.len() as u64)
    }

    /// Remove the rows with keys in `from..=through`; returns how many. Reads only what it
    /// removes, so pruning a per-cluster log by sequence number costs what it prunes, not the
    /// size of what it keeps.
    pub fn remove_range<V>(
        &self,
        t: &StrTable<V>,
        from: &str,
        through: &str,
    ) -> Result<u64, StoreError> {
        self.open(t)?.remove_range(from, through)
    }

    /// Drop a whole table (a format that was replaced); returns whether it existed.
    pub fn drop_seq_table<V>(&self, t: &SeqTable<V>) -> Result<bool, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.drop_log(t.name));
        Ok(txn.delete_table(t.def())?)
    }

    /// Up to `limit` entries with sequence number `>= from`, in order.
    pub fn range<V: DeserializeOwned>(
        &self,
        t: &SeqTable<V>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, V)>, StoreError> {
        let txn =
            engine!(self, WriteEngine, pg => decode_rows(t.name, pg.range(t.name, from, limit)?));
        let table = txn.open_table(t.def())?;
        let mut out = Vec::new();
        for row in table.range(from..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    /// Insert at an explicit sequence number (the caller owns the counter).
    pub fn insert_at<V: Serialize>(
        &self,
        t: &SeqTable<V>,
        seq: u64,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = enc(t.name, value)?;
        let txn = engine!(self, WriteEngine, pg => pg.insert_at(t.name, seq, &bytes));
        let mut table = txn.open_table(t.def())?;
        table.insert(seq, bytes.as_slice())?;
        Ok(())
    }

    pub fn remove_seq<V>(&self, t: &SeqTable<V>, seq: u64) -> Result<bool, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.remove_seq(t.name, seq));
        let mut table = txn.open_table(t.def())?;
        let existed = table.remove(seq)?.is_some();
        Ok(existed)
    }

    /// Remove every entry with a sequence number `<= seq`; returns how many.
    pub fn remove_through<V>(&self, t: &SeqTable<V>, seq: u64) -> Result<u64, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.remove_through(t.name, seq));
        let mut table = txn.open_table(t.def())?;
        let mut removed = 0;
        loop {
            let first = table.first()?.map(|(k, _)| k.value());
            match first {
                Some(k) if k <= seq => {
                    table.remove(k)?;
                    removed += 1;
                }
                _ => break,
            }
        }
        Ok(removed)
    }

    pub fn seq_len<V>(&self, t: &SeqTable<V>) -> Result<u64, StoreError> {
        let txn = engine!(self, WriteEngine, pg => pg.seq_len(t.name));
        let table = txn.open_table(t.def())?;
        Ok(table.len()?)
    }

    /// Append at the next sequence number (1-based) and return it.
    pub fn append<V: Serialize>(&self, t: &SeqTable<V>, value: &V) -> Result<u64, StoreError> {
        let bytes = enc(t.name, value)?;
        let txn = engine!(self, WriteEngine, pg => pg.append(t.name, &bytes));
        let mut table = txn.open_table(t.def())?;
        let next = match table.last()? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        table.insert(next, bytes.as_slice())?;
        Ok(next)
    }
}

/// A table of a write transaction kept open across several operations. Opening a redb table
/// looks it up in the table tree and writes its root back on close; a status batch touches the
/// same three tables a dozen times, and opening each once measured ~15 % more ingest throughput.
/// While it is open, the same table cannot be opened again in this transaction (redb refuses
/// with `TableAlreadyOpen`), so keep it to one function's scope.
pub struct OpenStrTable<'tx, V> {
    name: &'static str,
    table: OpenEngine<'tx>,
    _v: PhantomData<fn() -> V>,
}

enum OpenEngine<'tx> {
    Redb(redb::Table<'tx, &'static str, &'static [u8]>),
    /// Nothing to open: statements name their table.
    #[cfg(feature = "postgres")]
    Pg(&'tx crate::pg::WriteTx),
}

impl<V> OpenStrTable<'_, V> {
    pub fn get(&self, key: &str) -> Result<Option<V>, StoreError>
    where
        V: DeserializeOwned,
    {
        let table = match &self.table {
            OpenEngine::Redb(t) => t,
            #[cfg(feature = "postgres")]
            OpenEngine::Pg(pg) => {
                use crate::pg::Ops as _;
                return pg
                    .get(self.name, key)?
                    .map(|v| dec(self.name, &v))
                    .transpose();
            }
        };
        let value = table.get(key)?;
        value.map(|v| dec(self.name, v.value())).transpose()
    }

    pub fn put(&mut self, key: &str, value: &V) -> Result<(), StoreError>
    where
        V: Serialize,
    {
        let bytes = enc(self.name, value)?;
        match &mut self.table {
            OpenEngine::Redb(t) => {
                t.insert(key, bytes.as_slice())?;
            }
            #[cfg(feature = "postgres")]
            OpenEngine::Pg(pg) => pg.put(self.name, key, &bytes)?,
        }
        Ok(())
    }

    /// Remove the rows with keys in `from..=through`; returns how many (see
    /// [`WriteTx::remove_range`]).
    pub fn remove_range(&mut self, from: &str, through: &str) -> Result<u64, StoreError> {
        let table = match &mut self.table {
            OpenEngine::Redb(t) => t,
            #[cfg(feature = "postgres")]
            OpenEngine::Pg(pg) => return pg.remove_range(self.name, from, through),
        };
        let doomed: Vec<String> = table
            .range::<&str>(from..=through)?
            .map(|row| row.map(|(k, _)| k.value().to_string()))
            .collect::<Result<_, _>>()?;
        for k in &doomed {
            table.remove(k.as_str())?;
        }
        Ok(doomed.len() as u64)
    }
}

/// A log of a write transaction kept open for several appends (as [`OpenStrTable`], and with
/// the next sequence number looked up once instead of per append).
pub struct OpenSeqTable<'tx, V> {
    name: &'static str,
    table: OpenLogEngine<'tx>,
    _v: PhantomData<fn() -> V>,
}

enum OpenLogEngine<'tx> {
    Redb {
        table: redb::Table<'tx, u64, &'static [u8]>,
        next: Option<u64>,
    },
    #[cfg(feature = "postgres")]
    Pg(&'tx crate::pg::WriteTx),
}

impl<V: Serialize> OpenSeqTable<'_, V> {
    /// Append at the next sequence number (1-based) and return it.
    pub fn append(&mut self, value: &V) -> Result<u64, StoreError> {
        let bytes = enc(self.name, value)?;
        match &mut self.table {
            OpenLogEngine::Redb { table, next } => {
                let seq = match *next {
                    Some(n) => n,
                    None => table.last()?.map_or(1, |(k, _)| k.value() + 1),
                };
                table.insert(seq, bytes.as_slice())?;
                *next = Some(seq + 1);
                Ok(seq)
            }
            #[cfg(feature = "postgres")]
            OpenLogEngine::Pg(pg) => pg.append(self.name, &bytes),
        }
    }
}

pub struct ReadTx {
    txn: ReadEngine,
}

enum ReadEngine {
    Redb(ReadTransaction),
    #[cfg(feature = "postgres")]
    Pg(crate::pg::ReadTx),
}

impl ReadTx {
    pub(crate) fn new(txn: ReadTransaction) -> Self {
        Self {
            txn: ReadEngine::Redb(txn),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg(tx: crate::pg::ReadTx) -> Self {
        Self {
            txn: ReadEngine::Pg(tx),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn into_pg(self) -> crate::pg::ReadTx {
        match self.txn {
            ReadEngine::Pg(tx) => tx,
            ReadEngine::Redb(_) => unreachable!("a redb transaction is never made a pg one"),
        }
    }

    pub fn get<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
        key: &str,
    ) -> Result<Option<V>, StoreError> {
        let txn = engine!(self, ReadEngine, pg => pg.get(t.name, key)?.map(|v| dec(t.name, &v)).transpose());
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value = table.get(key)?;
        value.map(|v| dec(t.name, v.value())).transpose()
    }

    pub fn list<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let txn = engine!(self, ReadEngine, pg => decode_rows(t.name, pg.list(t.name)?));
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    /// Up to `limit` entries with sequence number `>= from`, in order.
    pub fn range<V: DeserializeOwned>(
        &self,
        t: &SeqTable<V>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, V)>, StoreError> {
        let txn =
            engine!(self, ReadEngine, pg => decode_rows(t.name, pg.range(t.name, from, limit)?));
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.range(from..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    pub fn seq_len<V>(&self, t: &SeqTable<V>) -> Result<u64, StoreError> {
        let txn = engine!(self, ReadEngine, pg => pg.seq_len(t.name));
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(table.len()?)
    }

    /// Rows whose key starts with `prefix`, in key order.
    pub fn list_prefix<V: DeserializeOwned>(
        &self,
        t: &StrTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let txn =
            engine!(self, ReadEngine, pg => decode_rows(t.name, pg.list_prefix(t.name, prefix)?));
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.range(prefix..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), dec(t.name, v.value())?));
        }
        Ok(out)
    }

    /// The last `limit` entries of a log, oldest first.
    pub fn tail<V: DeserializeOwned>(
        &self,
        t: &SeqTable<V>,
        limit: usize,
    ) -> Result<Vec<(u64, V)>, StoreError> {
        let txn = engine!(self, ReadEngine, pg => decode_rows(t.name, pg.tail(t.name, limit)?));
        let table = match txn.open_table(t.def()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (k, v) = row?;
            out.push((k.value(), dec(t.name, v.value())?));
        }
        out.reverse();
        Ok(out)
    }
}

/// Rows as PostgreSQL returned them (keys of either kind), values decoded.
#[cfg(feature = "postgres")]
fn decode_rows<K, V: DeserializeOwned>(
    table: &'static str,
    rows: Vec<(K, Vec<u8>)>,
) -> Result<Vec<(K, V)>, StoreError> {
    rows.into_iter()
        .map(|(k, v)| Ok((k, dec(table, &v)?)))
        .collect()
}
