//! The hub's two stores answer alike: the same operations on the embedded redb store and on a
//! real PostgreSQL server (Debian's, started in a temporary directory on loopback) give the
//! same results, row for row and in the same order. Plus what only PostgreSQL has: the schema
//! version check, the change feed and its doorbell, and committed data surviving a crash of the
//! server.

use std::time::Duration;
use tether_sim::pg::{available_or_skip, TestServer};
use tether_store::{SeqTable, Store, StoreError, StrTable, WriteTx};

const T: StrTable<String> = StrTable::new("things");
const HIST: StrTable<u64> = StrTable::new("status_history");
const LOG: SeqTable<String> = SeqTable::new("events");

/// A script of every table operation, returning everything it observed.
fn script(store: &Store) -> Vec<String> {
    let mut seen = Vec::new();
    let mut say = |s: String| seen.push(s);
    store
        .write(|tx: &WriteTx| {
            for k in [
                "b/2",
                "a/1",
                "b/10",
                "b/1",
                "c",
                "b",
                "b0",
                "é/x",
                "b/\u{10FFFF}",
            ] {
                tx.put(&T, k, &format!("v-{k}"))?;
            }
            tx.put(&T, "a/1", &"replaced".to_string())?;
            for i in 0..5 {
                say(format!("append {}", tx.append(&LOG, &format!("e{i}"))?));
            }
            tx.insert_at(&LOG, 10, &"ten".to_string())?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    store
        .write(|tx| {
            say(format!("get a/1 {:?}", tx.get(&T, "a/1")?));
            say(format!("get nope {:?}", tx.get(&T, "nope")?));
            say(format!("list {:?}", tx.list(&T)?));
            say(format!("prefix b/ {:?}", tx.list_prefix(&T, "b/")?));
            say(format!("count {}", tx.count(&T)?));
            say(format!("remove c {}", tx.remove(&T, "c")?));
            say(format!("remove c again {}", tx.remove(&T, "c")?));
            say(format!(
                "keep newest 2 of b/ {}",
                tx.remove_prefix_except_newest(&T, "b/", 2)?
            ));
            say(format!("range a..b/ {}", tx.remove_range(&T, "a", "b/")?));
            say(format!("after {:?}", tx.list(&T)?));
            say(format!("seq range {:?}", tx.range(&LOG, 2, 3)?));
            say(format!("remove seq 3 {}", tx.remove_seq(&LOG, 3)?));
            say(format!("remove through 2 {}", tx.remove_through(&LOG, 2)?));
            say(format!("seq len {}", tx.seq_len(&LOG)?));
            say(format!(
                "append after 10 {}",
                tx.append(&LOG, &"next".to_string())?
            ));
            say(format!("remove prefix b {}", tx.remove_prefix(&T, "b")?));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    // A failed write leaves nothing behind.
    let failed: Result<(), StoreError> = store.write(|tx| {
        tx.put(&T, "ghost", &"x".to_string())?;
        tx.append(&LOG, &"ghost".to_string())?;
        Err(StoreError::Corrupt {
            table: "things",
            detail: "the caller gave up".into(),
        })
    });
    say(format!("failed write {}", failed.is_err()));
    store
        .read(|tx| {
            say(format!("read get ghost {:?}", tx.get(&T, "ghost")?));
            say(format!("read list {:?}", tx.list(&T)?));
            say(format!("read prefix é {:?}", tx.list_prefix(&T, "é")?));
            say(format!("read tail {:?}", tx.tail(&LOG, 2)?));
            say(format!("read range {:?}", tx.range(&LOG, 0, 100)?));
            say(format!("read seq len {}", tx.seq_len(&LOG)?));
            say(format!(
                "read missing table {:?}",
                tx.list(&StrTable::<u8>::new("none"))?
            ));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    seen
}

#[test]
fn redb_and_postgres_answer_alike() {
    if !available_or_skip("redb_and_postgres_answer_alike") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redb = Store::open(dir.path().join("hub.redb")).unwrap();
    let server = TestServer::start().unwrap();
    let url = server.create_db("alike").unwrap();
    let pg = Store::open_postgres(&url, true).unwrap();
    assert!(redb.is_embedded() && !pg.is_embedded());
    let (a, b) = (script(&redb), script(&pg));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
    // Sanity: the script saw data (a script that saw nothing would agree too).
    assert!(a.iter().any(|l| l.contains("replaced")), "{a:#?}");
}

#[test]
fn postgres_schema_is_created_by_init_only_and_never_downgraded() {
    if !available_or_skip("postgres_schema_is_created_by_init_only_and_never_downgraded") {
        return;
    }
    let server = TestServer::start().unwrap();
    let url = server.create_db("schema").unwrap();
    // serve on an empty database: refused, and nothing created.
    let err = Store::open_postgres(&url, false).unwrap_err();
    assert!(matches!(err, StoreError::MissingSchema { .. }), "{err}");
    assert!(err.to_string().contains("tether-hub init"), "{err}");
    let store = Store::open_postgres(&url, true).unwrap();
    drop(store);
    // Opening again (both ways) is fine and idempotent.
    Store::open_postgres(&url, false).unwrap();
    Store::open_postgres(&url, true).unwrap();
    // A database written by a newer binary is refused with both versions named.
    server
        .sql("schema", "UPDATE tether_schema SET version = 99")
        .unwrap();
    let err = Store::open_postgres(&url, false).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, known, .. } if known == tether_store::SCHEMA_VERSION),
        "{err}"
    );
    // A URL with a password never shows it in errors.
    let err = Store::open_postgres(
        &format!("postgres://tether:hunter2@127.0.0.1:{}/nope", server.port()),
        false,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(
        !err.is_retryable() || err.to_string().contains("nope"),
        "{err}"
    );
}

#[test]
fn postgres_change_feed_follows_commits_and_rings_its_doorbell() {
    if !available_or_skip("postgres_change_feed_follows_commits_and_rings_its_doorbell") {
        return;
    }
    let server = TestServer::start().unwrap();
    let url = server.create_db("feed").unwrap();
    let store = Store::open_postgres(&url, true).unwrap();
    let mut bell = store.doorbell().unwrap();
    assert!(
        !bell.wait(Duration::from_millis(100)).unwrap(),
        "nothing yet"
    );
    store
        .write(|tx| {
            tx.put(&T, "x", &"1".to_string())?;
            tx.put(&T, "x", &"2".to_string())?;
            tx.put(&T, "y", &"1".to_string())?;
            // Per-entry history is not fed.
            tx.put(&HIST, "c/1", &1)?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert!(bell.wait(Duration::from_secs(5)).unwrap(), "a commit rings");
    let feed = store.changes_since(0, 100).unwrap();
    let keys: Vec<_> = feed
        .iter()
        .map(|c| (c.table.as_str(), c.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("things", "x"), ("things", "y")],
        "one entry per row changed"
    );
    // A rolled-back write is not in the feed and rings nothing.
    let _ = store.write(|tx| {
        tx.put(&T, "z", &"1".to_string())?;
        Err::<(), _>(StoreError::Corrupt {
            table: "things",
            detail: "abandoned".into(),
        })
    });
    assert!(!bell.wait(Duration::from_millis(200)).unwrap());
    let last = feed.last().unwrap().id;
    assert!(store.changes_since(last, 100).unwrap().is_empty());
    store.write(|tx| tx.remove(&T, "x").map(|_| ())).unwrap();
    let next = store.changes_since(last, 100).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].table.as_str(), next[0].key.as_str()),
        ("things", "x")
    );
    // Pruning moves the horizon: a reader positioned below it knows it missed changes.
    assert_eq!(store.changes_horizon().unwrap(), Some(feed[0].id));
    assert_eq!(store.prune_changes(last).unwrap(), 2);
    assert_eq!(store.changes_horizon().unwrap(), Some(next[0].id));
}

#[test]
fn postgres_keeps_what_was_committed_across_a_crash() {
    if !available_or_skip("postgres_keeps_what_was_committed_across_a_crash") {
        return;
    }
    let server = TestServer::start().unwrap();
    let url = server.create_db("crash").unwrap();
    let store = Store::open_postgres(&url, true).unwrap();
    for i in 0..50 {
        store
            .write(|tx| tx.put(&T, &format!("k{i:02}"), &format!("v{i}")))
            .unwrap();
    }
    server.kill().unwrap();
    // The server is gone: a typed, retryable error and the store says it is failing.
    let err = store
        .write(|tx| tx.put(&T, "lost", &"x".to_string()))
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(store.failure().is_some());
    server.pg_ctl_start().unwrap();
    // The same handle reconnects on its own and finds every committed row.
    let rows = store.read(|tx| tx.list(&T)).unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[49], ("k49".to_string(), "v49".to_string()));
    assert!(store.failure().is_none(), "recovered");
}
