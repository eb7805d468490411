//! `ingest`: status entries per second committed durably through the hub's group committer
//! and `status::ingest` (no network) vs raw redb commits of the same entries, and vs the same
//! data model written straight to the store with perfect batching.

use super::harness::{bench_hub_config, save};
use super::{BenchArgs, Results};
use crate::fleet::LocalHub;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tether_protocol::{StatusBatch, StatusEntry, WorkPhase, WorkStatus};

pub(super) const WRITERS: usize = 64;
pub(super) const BATCH: usize = 4;

#[derive(Debug, Serialize)]
pub struct Ingest {
    pub writers: usize,
    pub entries_per_batch: usize,
    pub hub_entries_per_s: f64,
    pub raw_redb_entries_per_s: f64,
    pub raw_commit_entries: usize,
    pub ratio: f64,
    /// The hub's data model (`status::ingest`) straight on its store, WRITERS batches per commit.
    pub model_redb_entries_per_s: f64,
    pub ratio_to_model: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let i = ingest(args.ingest_s).await?;
    println!(
        "ingest: hub {:.0} status entries/s durable vs raw redb {:.0}/s ({} entries per commit): {:.2}x; vs the same data model without the group committer {:.0}/s: {:.2}x",
        i.hub_entries_per_s, i.raw_redb_entries_per_s, i.raw_commit_entries, i.ratio,
        i.model_redb_entries_per_s, i.ratio_to_model
    );
    r.ingest = Some(i);
    save(&args.out, r)
}

async fn ingest(secs: u64) -> anyhow::Result<Ingest> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let hub_rate = hub_rate(dir, bench_hub_config(&dir.join("hub")), secs).await?;
    // One commit per WRITERS * BATCH entries: the most the group commit can merge with
    // WRITERS writers.
    let raw_commit = WRITERS * BATCH;
    let raw_rate = raw_rate(dir, secs, raw_commit).await?;
    let model_rate = model_rate(dir, secs).await?;
    Ok(Ingest {
        writers: WRITERS,
        entries_per_batch: BATCH,
        hub_entries_per_s: hub_rate,
        raw_redb_entries_per_s: raw_rate,
        raw_commit_entries: raw_commit,
        ratio: hub_rate / raw_rate,
        model_redb_entries_per_s: model_rate,
        ratio_to_model: hub_rate / model_rate,
    })
}

pub(super) fn status(seq: u64) -> StatusEntry {
    StatusEntry {
        seq,
        status: WorkStatus {
            work: format!("w{}", seq % 8),
            generation: seq,
            hash: "0".repeat(64),
            phase: WorkPhase::Applied,
            conditions: vec![],
            resources: vec![],
            message: String::new(),
            observed_at_ms: 0,
        },
    }
}

/// The works the writers report on, as if the hub had selected them for every writer.
fn selected() -> tether_hub::parts::Scope {
    let works: std::collections::BTreeSet<String> = (0..8).map(|w| format!("w{w}")).collect();
    tether_hub::parts::Scope {
        known: works.clone(),
        selected: works,
    }
}

fn batch_from(seq: u64) -> StatusBatch {
    StatusBatch {
        from_seq: seq + 1,
        to_seq: seq + BATCH as u64,
        entries: (1..=BATCH as u64).map(|k| status(seq + k)).collect(),
    }
}

/// WRITERS clusters, each sending BATCH entries at a time through the hub's group committer.
pub(super) async fn hub_rate(
    dir: &Path,
    cfg: tether_hub::HubConfig,
    secs: u64,
) -> anyhow::Result<f64> {
    let mut hub = LocalHub::start(&dir.join("hub"), cfg).await?;
    let selected = selected();
    let state = hub.running().state.clone();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let state = state.clone();
        let selected = selected.clone();
        tasks.push(tokio::spawn(async move {
            let cluster = format!("c{w:03}");
            let mut seq = 0u64;
            let mut stored = 0usize;
            while Instant::now() < until {
                let batch = batch_from(seq);
                seq += BATCH as u64;
                match state.ingest_status(&cluster, batch, selected.clone()).await {
                    Ok(i) => stored += i.stored,
                    Err(_) => break,
                }
            }
            stored
        }));
    }
    let t = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    hub.stop().await;
    Ok(rate)
}

/// Raw redb: the same encoded entries, Durability::Immediate, `per_commit` entries a commit.
async fn raw_rate(dir: &Path, secs: u64, per_commit: usize) -> anyhow::Result<f64> {
    let db = redb::Database::create(dir.join("raw.redb"))?;
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let encoded: Vec<Vec<u8>> = (0..per_commit as u64)
        .map(|s| tether_protocol::codec::encode(&status(s)))
        .collect::<Result<_, _>>()?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut key = 0u64;
        while t.elapsed() < Duration::from_secs(secs) {
            let mut tx = db.begin_write()?;
            tx.set_durability(redb::Durability::Immediate)?;
            {
                let mut tbl = tx.open_table(table)?;
                for e in &encoded {
                    tbl.insert(key, e.as_slice())?;
                    key += 1;
                }
            }
            tx.commit()?;
        }
        Ok(key as f64 / t.elapsed().as_secs_f64())
    })
    .await?
}

/// The hub's own data model (`status::ingest`: cursor, per-work row, unfiled log append, and
/// the filing into each cluster's history as often as the hub files) on its own store, WRITERS
/// batches per fsynced commit, one thread, no committer and no async hand-off. What separates
/// the hub from this is the group-commit path; what separates this from raw redb is the data
/// model.
async fn model_rate(dir: &Path, secs: u64) -> anyhow::Result<f64> {
    let store = tether_store::Store::open(dir.join("model.redb"))?;
    let selected = selected();
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut seq = 0u64;
        let mut stored = 0usize;
        let mut unfiled = 0usize;
        while t.elapsed() < Duration::from_secs(secs) {
            if unfiled >= tether_hub::parts::FILE_AT {
                store.write(|tx| tether_hub::parts::file_history(tx, usize::MAX))?;
                unfiled = 0;
            }
            store.write(|tx| {
                for w in 0..WRITERS {
                    let batch = batch_from(seq);
                    let cluster = format!("c{w:03}");
                    let n = tether_hub::parts::ingest(tx, &cluster, &batch, &selected, 0)?.stored;
                    stored += n;
                    unfiled += n;
                }
                Ok::<_, tether_store::StoreError>(())
            })?;
            seq += BATCH as u64;
        }
        Ok(stored as f64 / t.elapsed().as_secs_f64())
    })
    .await?
}
