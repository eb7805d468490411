//! What a PostgreSQL write transaction has written and read, kept on the hub's side.
//!
//! Every statement is a hop to the connection's thread and a round trip to the server. A group
//! commit of 64 status batches made about a thousand of them, one per get, put and append,
//! and measured at 0.02x of a raw multi-row INSERT. So a write transaction keeps its puts,
//! deletes and appends here and sends them as one multi-row statement per kind: before a scan
//! (which must see them) or a statement that writes by range, and at commit. A `get` answers
//! from here when it can: rows this transaction wrote, and rows it read before (a prefetch,
//! `WriteTx::prefetch`, reads many in one statement).
//!
//! Remembering what was read is safe for the whole transaction because every writer of every
//! hub process holds the database-wide write lock until it commits: no other writer can change
//! a row between this transaction's read and its commit.

use std::collections::HashMap;

type Row = (&'static str, String);

#[derive(Default)]
pub(crate) struct Pending {
    /// The last write of each row not yet sent: `Some` an upsert, `None` a delete.
    writes: HashMap<Row, Option<Vec<u8>>>,
    appends: Vec<(&'static str, i64, Vec<u8>)>,
    /// The next sequence number of each log this transaction appended to.
    next_seq: HashMap<&'static str, i64>,
    /// What rows hold in the database as this transaction last saw them (`None`: no row).
    known: HashMap<Row, Option<Vec<u8>>>,
}

impl Pending {
    /// The row as this transaction sees it, if that is known without asking the server.
    pub(crate) fn lookup(&self, tbl: &'static str, key: &str) -> Option<Option<Vec<u8>>> {
        let row = (tbl, key.to_string());
        self.writes
            .get(&row)
            .or_else(|| self.known.get(&row))
            .cloned()
    }

    pub(crate) fn learn(&mut self, tbl: &'static str, key: &str, val: Option<Vec<u8>>) {
        self.known.insert((tbl, key.to_string()), val);
    }

    pub(crate) fn put(&mut self, tbl: &'static str, key: &str, val: Option<Vec<u8>>) {
        self.writes.insert((tbl, key.to_string()), val);
    }

    /// The rows of `rows` whose content is not known yet, each once (a status batch names
    /// the same work in many entries).
    pub(crate) fn unknown(
        &self,
        rows: &[(&'static str, &str)],
    ) -> (Vec<&'static str>, Vec<String>) {
        let mut seen = std::collections::HashSet::new();
        rows.iter()
            .filter(|(t, k)| self.lookup(t, k).is_none() && seen.insert((*t, *k)))
            .map(|(t, k)| (*t, k.to_string()))
            .unzip()
    }

    /// The sequence number the next append to `tbl` takes, if this transaction appended before.
    pub(crate) fn next_seq(&self, tbl: &'static str) -> Option<i64> {
        self.next_seq.get(tbl).copied()
    }

    pub(crate) fn append(&mut self, tbl: &'static str, seq: i64, val: Vec<u8>) {
        self.appends.push((tbl, seq, val));
        self.next_seq.insert(tbl, seq + 1);
    }

    /// A statement is about to change `tbl`'s rows by range: what was known of them is stale.
    pub(crate) fn forget_table(&mut self, tbl: &'static str) {
        self.known.retain(|(t, _), _| *t != tbl);
    }

    /// A statement is about to change the log `tbl` other than by appending.
    pub(crate) fn forget_log(&mut self, tbl: &'static str) {
        self.next_seq.remove(tbl);
    }

    /// Take the writes to send; what they write becomes what is known.
    pub(crate) fn take(&mut self) -> Batch {
        let mut batch = Batch::default();
        for ((tbl, key), val) in self.writes.drain() {
            match &val {
                Some(v) => {
                    batch.put_tbl.push(tbl);
                    batch.put_key.push(key.clone());
                    batch.put_val.push(v.clone());
                }
                None => batch.deletes.entry(tbl).or_default().push(key.clone()),
            }
            self.known.insert((tbl, key), val);
        }
        for (tbl, seq, val) in self.appends.drain(..) {
            batch.log_tbl.push(tbl);
            batch.log_seq.push(seq);
            batch.log_val.push(val);
        }
        batch
    }
}

/// Writes to send in one go: at most one statement per kind.
#[derive(Default)]
pub(crate) struct Batch {
    put_tbl: Vec<&'static str>,
    put_key: Vec<String>,
    put_val: Vec<Vec<u8>>,
    /// Keys to delete, per table (see `send`).
    deletes: HashMap<&'static str, Vec<String>>,
    log_tbl: Vec<&'static str>,
    log_seq: Vec<i64>,
    log_val: Vec<Vec<u8>>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.put_tbl.is_empty() && self.deletes.is_empty() && self.log_tbl.is_empty()
    }

    /// Send on the connection's thread, inside the open transaction.
    pub(crate) fn send(self, s: &mut super::Session) -> Result<(), postgres::Error> {
        // Each row appears once (the map above), so one upsert never meets the same row twice,
        // which PostgreSQL refuses.
        if !self.put_tbl.is_empty() {
            let st = s.prepared(
                "INSERT INTO tether_kv (tbl, key, val)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
                 ON CONFLICT (tbl, key) DO UPDATE SET val = excluded.val",
            )?;
            s.client
                .execute(&st, &[&self.put_tbl, &self.put_key, &self.put_val])?;
        }
        // Per table, so the primary key's index finds each row. (A join with the unnest, as
        // the statements around this one could be written, gets a hash join over the whole
        // table from the planner, which cannot know how few rows the array holds.)
        for (tbl, keys) in self.deletes {
            let st = s.prepared("DELETE FROM tether_kv WHERE tbl = $1 AND key = ANY($2)")?;
            s.client.execute(&st, &[&tbl, &keys])?;
        }
        if !self.log_tbl.is_empty() {
            let st = s.prepared(
                "INSERT INTO tether_log (tbl, seq, val)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])",
            )?;
            s.client
                .execute(&st, &[&self.log_tbl, &self.log_seq, &self.log_val])?;
        }
        Ok(())
    }
}

/// Read many rows in one statement: for each `(table, key)` asked, by position, its value or
/// `None` when there is no such row.
pub(crate) fn select_rows(
    s: &mut super::Session,
    tbls: &[&'static str],
    keys: &[String],
) -> Result<Vec<Option<Vec<u8>>>, postgres::Error> {
    let st = s.prepared(
        // LATERAL: one index lookup per row asked (a plain join gets a hash join over the
        // whole table from the planner, which cannot know how few rows the array holds).
        "SELECT u.i, kv.val FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(tbl, key, i)
         LEFT JOIN LATERAL (SELECT val FROM tether_kv WHERE tbl = u.tbl AND key = u.key) AS kv
         ON true",
    )?;
    let mut out = vec![None; tbls.len()];
    for r in s.client.query(&st, &[&tbls, &keys])? {
        let i: i64 = r.get(0);
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = r.get(1);
        }
    }
    Ok(out)
}
