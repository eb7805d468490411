//! `ingest-pg`: status entries per second committed through the hub's group committer and
//! `status::ingest` with the hub's tables in PostgreSQL (Debian's server, started here in a
//! temporary directory on loopback, fsync and synchronous commit on), vs raw multi-row
//! INSERTs of the same encoded entries into a plain table on the same server, one commit per
//! as many entries as the group commit can merge. Also the database cost of one status entry
//! (rows written, WAL bytes) on each side: the unit costs docs/capacity.md builds on.

use super::harness::{bench_hub_config, save};
use super::ingest::{hub_rate, status, BATCH, WRITERS};
use super::{BenchArgs, Results};
use crate::pg::TestServer;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct IngestPg {
    pub writers: usize,
    pub entries_per_batch: usize,
    pub hub_entries_per_s: f64,
    pub raw_insert_entries_per_s: f64,
    pub raw_commit_entries: usize,
    pub ratio: f64,
    /// Rows inserted, updated or deleted per status entry stored by the hub (cursor, status
    /// row, unfiled log, filed history, change feed), and WAL bytes per entry.
    pub hub_rows_per_entry: f64,
    pub hub_wal_bytes_per_entry: f64,
    pub raw_wal_bytes_per_entry: f64,
    /// Through the hub's store on the same database, after the run: one `get` of a row the
    /// transaction has not read (a statement: the hop to the connection's thread, the round
    /// trip, the execution), and one small write transaction (the write lock, one upsert, its
    /// change row and doorbell, the durable commit).
    pub store_statement_us: f64,
    pub store_commit_us: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let i = ingest_pg(args.ingest_s).await?;
    println!(
        "ingest-pg: through the store, one statement {:.0} µs, one small durable write transaction {:.0} µs",
        i.store_statement_us, i.store_commit_us
    );
    println!(
        "ingest-pg: hub on PostgreSQL {:.0} status entries/s durable vs raw multi-row INSERT {:.0}/s ({} entries per commit): {:.2}x; per entry the hub writes {:.1} rows and {:.0} WAL bytes (raw: {:.0})",
        i.hub_entries_per_s,
        i.raw_insert_entries_per_s,
        i.raw_commit_entries,
        i.ratio,
        i.hub_rows_per_entry,
        i.hub_wal_bytes_per_entry,
        i.raw_wal_bytes_per_entry,
    );
    r.ingest_pg = Some(i);
    save(&args.out, r)
}

/// What the server has written so far: WAL position and row changes in database `db`.
async fn counters(server: &TestServer, db: &str) -> anyhow::Result<(u64, u64)> {
    let url = server.url(db);
    tokio::task::spawn_blocking(move || read_counters(&url)).await?
}

fn read_counters(url: &str) -> anyhow::Result<(u64, u64)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let row = c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
                (SELECT coalesce(tup_inserted + tup_updated + tup_deleted, 0)
                   FROM pg_stat_database WHERE datname = current_database())::bigint",
        &[],
    )?;
    let (wal, rows): (i64, i64) = (row.get(0), row.get(1));
    Ok((wal.max(0) as u64, rows.max(0) as u64))
}

async fn ingest_pg(secs: u64) -> anyhow::Result<IngestPg> {
    let server = tokio::task::spawn_blocking(TestServer::start).await??;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    let hub_db = server.create_db("bench_hub")?;
    let mut cfg = bench_hub_config(&dir.join("hub"));
    cfg.store = tether_hub::config::StoreLocation::Postgres(hub_db);
    let before = counters(&server, "bench_hub").await?;
    let t = Instant::now();
    let hub_rate = hub_rate(dir, cfg, secs).await?;
    let hub_entries = hub_rate * t.elapsed().as_secs_f64().min(secs as f64);
    // Row counters reach pg_stat_database when each backend reports (at the latest when it
    // exits, and the hub has stopped); give the collector a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = counters(&server, "bench_hub").await?;
    let url = server.url("bench_hub");
    let (store_statement_us, store_commit_us) =
        tokio::task::spawn_blocking(move || unit_costs(&url)).await??;

    let raw_commit = WRITERS * BATCH;
    let raw_db = server.create_db("bench_raw")?;
    let raw_before = counters(&server, "bench_raw").await?;
    let (raw_rate, raw_entries) =
        tokio::task::spawn_blocking(move || raw_rate(&raw_db, secs, raw_commit)).await??;
    let raw_after = counters(&server, "bench_raw").await?;
    let per = |d: u64, n: f64| if n > 0.0 { d as f64 / n } else { 0.0 };
    Ok(IngestPg {
        writers: WRITERS,
        entries_per_batch: BATCH,
        hub_entries_per_s: hub_rate,
        raw_insert_entries_per_s: raw_rate,
        raw_commit_entries: raw_commit,
        ratio: hub_rate / raw_rate,
        hub_rows_per_entry: per(after.1.saturating_sub(before.1), hub_entries),
        hub_wal_bytes_per_entry: per(after.0.saturating_sub(before.0), hub_entries),
        raw_wal_bytes_per_entry: per(raw_after.0.saturating_sub(raw_before.0), raw_entries as f64),
        store_statement_us,
        store_commit_us,
    })
}

/// `t_stmt` and `t_commit` of docs/capacity.md, measured through the hub's store: mean µs of a
/// `get` of a row not read before in its transaction, and of a one-row write transaction.
fn unit_costs(url: &str) -> anyhow::Result<(f64, f64)> {
    const T: tether_store::StrTable<u64> = tether_store::StrTable::new("bench_units");
    const GETS: u64 = 5_000;
    const COMMITS: u64 = 500;
    let store = tether_store::Store::open_postgres(url, false)?;
    let t = Instant::now();
    store.read(|tx| {
        for i in 0..GETS {
            tx.get(&T, &format!("absent/{i}"))?;
        }
        Ok::<_, tether_store::StoreError>(())
    })?;
    let statement = t.elapsed().as_secs_f64() * 1e6 / GETS as f64;
    let t = Instant::now();
    for i in 0..COMMITS {
        store.write(|tx| tx.put(&T, &format!("k/{i}"), &i))?;
    }
    let commit = t.elapsed().as_secs_f64() * 1e6 / COMMITS as f64;
    Ok((statement, commit))
}

/// The same encoded entries, `per_commit` a statement, each statement its own durable commit.
fn raw_rate(url: &str, secs: u64, per_commit: usize) -> anyhow::Result<(f64, u64)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    c.batch_execute("CREATE TABLE raw (seq bigint PRIMARY KEY, val bytea NOT NULL)")?;
    let encoded: Vec<Vec<u8>> = (0..per_commit as u64)
        .map(|s| tether_protocol::codec::encode(&status(s)))
        .collect::<Result<_, _>>()?;
    let insert =
        c.prepare("INSERT INTO raw (seq, val) SELECT * FROM unnest($1::bigint[], $2::bytea[])")?;
    let t = Instant::now();
    let mut next = 0i64;
    while t.elapsed() < Duration::from_secs(secs) {
        let seqs: Vec<i64> = (next..next + per_commit as i64).collect();
        c.execute(&insert, &[&seqs, &encoded])?;
        next += per_commit as i64;
    }
    Ok((next as f64 / t.elapsed().as_secs_f64(), next as u64))
}
