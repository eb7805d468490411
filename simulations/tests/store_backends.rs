//! The hub's two stores answer alike: the same operations on the embedded redb store and on a
//! real PostgreSQL server (Debian's, started in a temporary directory on loopback) give the
//! same results, row for row and in the same order. Plus what only PostgreSQL has: the schema
//! version check, the change feed and its doorbell, committed data surviving a crash of the
//! server, and TLS to the server, verified against its CA.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;
use tether_sim::pg::{available_or_skip, TestServer, TestTls, TLS_PASSWORD};
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
    // A transaction that reads what it wrote before any statement sent it (PostgreSQL keeps
    // puts, deletes and appends until a scan or the commit), and reads it prefetched.
    store
        .write(|tx| {
            tx.prefetch(&[(T.name(), "b/2"), (T.name(), "x/1"), (T.name(), "x/9")])?;
            say(format!("prefetched b/2 {:?}", tx.get(&T, "b/2")?));
            tx.put(&T, "x/1", &"one".to_string())?;
            tx.put(&T, "x/2", &"two".to_string())?;
            tx.put(&T, "x/1", &"uno".to_string())?;
            say(format!("own put {:?}", tx.get(&T, "x/1")?));
            say(format!("remove own put {}", tx.remove(&T, "x/2")?));
            say(format!("get removed {:?}", tx.get(&T, "x/2")?));
            say(format!("remove absent {}", tx.remove(&T, "x/9")?));
            tx.put(&T, "x/2", &"back".to_string())?;
            say(format!("scan sees own {:?}", tx.list_prefix(&T, "x/")?));
            tx.put(&T, "x/3", &"three".to_string())?;
            say(format!(
                "range over own {}",
                tx.remove_range(&T, "x/2", "x/3")?
            ));
            say(format!("after range {:?}", tx.get(&T, "x/3")?));
            say(format!("append {}", tx.append(&LOG, &"p".to_string())?));
            say(format!("range sees own {:?}", tx.range(&LOG, 11, 10)?));
            say(format!(
                "append again {}",
                tx.append(&LOG, &"q".to_string())?
            ));
            tx.insert_at(&LOG, 40, &"forty".to_string())?;
            say(format!(
                "append after insert {}",
                tx.append(&LOG, &"r".to_string())?
            ));
            say(format!("remove seq 40 {}", tx.remove_seq(&LOG, 40)?));
            say(format!(
                "append after remove {}",
                tx.append(&LOG, &"s".to_string())?
            ));
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

/// Hub replicas are separate processes, each with its own store handle: their writes must be
/// serialized as one process's are, or a read-modify-write of one replica loses another's
/// update; and the feed must say which replica wrote each change and list them in commit order.
#[test]
fn postgres_serializes_writes_across_replicas_and_names_their_origin() {
    if !available_or_skip("postgres_serializes_writes_across_replicas_and_names_their_origin") {
        return;
    }
    let server = TestServer::start().unwrap();
    let url = server.create_db("replicas").unwrap();
    let first = Store::open_postgres(&url, true).unwrap();
    let stores: Vec<std::sync::Arc<Store>> = (0..3)
        .map(|i| {
            let s = Store::open_postgres(&url, false).unwrap();
            s.set_origin(&format!("replica-{i}")).unwrap();
            std::sync::Arc::new(s)
        })
        .collect();
    first
        .write(|tx| tx.put(&T, "counter", &"0".to_string()))
        .unwrap();
    const EACH: usize = 40;
    let threads: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    s.write(|tx| {
                        let n: u64 = tx.get(&T, "counter")?.unwrap_or_default().parse().unwrap();
                        // Widen the window between the read and the write.
                        std::thread::sleep(Duration::from_millis(1));
                        tx.put(&T, "counter", &(n + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = first.read(|tx| tx.get(&T, "counter")).unwrap().unwrap();
    assert_eq!(
        n,
        (3 * EACH).to_string(),
        "no increment lost between replicas"
    );
    let feed = first.changes_since(0, 1000).unwrap();
    assert_eq!(feed.len(), 1 + 3 * EACH);
    assert_eq!(feed[0].origin, "", "a store that was not named");
    for i in 0..3 {
        let mine = feed
            .iter()
            .filter(|c| c.origin == format!("replica-{i}"))
            .count();
        assert_eq!(mine, EACH);
    }
    assert!(feed.windows(2).all(|w| w[0].id < w[1].id));
    // Liveness: a beat lasts its time, a clean stop forgets at once.
    stores[0]
        .beat_replica("replica-0", Duration::from_secs(30))
        .unwrap();
    stores[1]
        .beat_replica("replica-1", Duration::from_millis(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(first.live_replicas().unwrap(), ["replica-0"]);
    stores[0].drop_replica("replica-0").unwrap();
    assert!(first.live_replicas().unwrap().is_empty());
    assert_eq!(first.changes_head().unwrap(), feed.last().unwrap().id);
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

/// The real binaries on PostgreSQL: `init --store` prepares the database (and refuses one that
/// already holds a hub), `serve` refuses a database `init` never prepared, and what an admin
/// was told is stored outlives the hub process; no redb file is made.
#[test]
fn the_hub_binary_keeps_its_tables_in_postgres() {
    if !available_or_skip("the_hub_binary_keeps_its_tables_in_postgres") {
        return;
    }
    let hub_bin = common::built_binary("tether-hub", "tether-hub");
    let ctl_bin = common::built_binary("tether-hub", "tetherctl");
    let server = TestServer::start().unwrap();
    let url = server.create_db("bin").unwrap();
    let empty = server.create_db("empty").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let init = |dir: &std::path::Path, store: &str| {
        Command::new(&hub_bin)
            .args(["init", "--hub-name", "localhost", "--admin-listen", &admin])
            .arg("--data-dir")
            .arg(dir)
            .env("TETHER_STORE", store)
            .output()
            .unwrap()
    };
    let out = init(&data, &url);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("--store $TETHER_STORE"), "{said}");
    assert!(!data.join("hub.redb").exists());
    // A second hub's identity is never mixed into a database that holds one.
    let out = init(&tmp.path().join("other"), &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a hub"),
        "{out:?}"
    );
    let serve = |store: &str| {
        Command::new(&hub_bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", &admin])
            .arg("--data-dir")
            .arg(&data)
            .env("TETHER_STORE", store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = serve(&empty).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tether-hub init"), "{err}");
    assert!(
        !data.join("hub.redb").exists(),
        "serve never creates a database"
    );

    let ctl = |args: &[&str]| {
        let started = std::time::Instant::now();
        loop {
            let out = Command::new(&ctl_bin)
                .args(args)
                .env("TETHER_CONFIG", data.join("tetherctl.yaml"))
                .output()
                .unwrap();
            if out.status.success() || started.elapsed() > Duration::from_secs(20) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut hub = serve(&url);
    let out = ctl(&["token", "create", "--ttl", "1h", "--uses", "3"]);
    assert!(out.status.success(), "{out:?}");
    hub.kill().unwrap();
    hub.wait().unwrap();
    let mut hub = serve(&url);
    let out = ctl(&["token", "list"]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().count() >= 2,
        "the token outlived the process: {listed}"
    );
    hub.kill().unwrap();
    hub.wait().unwrap();
    assert!(!data.join("hub.redb").exists());
}

/// One serving hub per database: the lease goes to one process at a time, and a process that
/// lost it (paused past its expiry while another took over) can never write again, because
/// every write checks the epoch in its own transaction.
#[test]
fn a_hub_that_lost_the_lease_is_fenced_from_writing() {
    if !available_or_skip("a_hub_that_lost_the_lease_is_fenced_from_writing") {
        return;
    }
    let server = TestServer::start().unwrap();
    let url = server.create_db("lease").unwrap();
    let old = Store::open_postgres(&url, true).unwrap();
    let new = Store::open_postgres(&url, false).unwrap();
    let ttl = Duration::from_millis(800);
    let a = old.acquire_lease("replica-a", ttl).unwrap().expect("free");
    old.fence_writes(&a).unwrap();
    assert!(
        new.acquire_lease("replica-b", ttl).unwrap().is_none(),
        "held"
    );
    assert!(old.renew_lease(&a, ttl).unwrap());
    old.write(|tx| tx.put(&T, "by-a", &"1".to_string()))
        .unwrap();
    // a stalls past its lease; b takes over with a new epoch.
    std::thread::sleep(ttl + Duration::from_millis(200));
    let b = new
        .acquire_lease("replica-b", ttl)
        .unwrap()
        .expect("expired");
    assert!(b.epoch > a.epoch);
    new.fence_writes(&b).unwrap();
    let err = old
        .write(|tx| tx.put(&T, "by-a-late", &"1".to_string()))
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!old.renew_lease(&a, ttl).unwrap(), "a's lease is gone");
    new.write(|tx| tx.put(&T, "by-b", &"1".to_string()))
        .unwrap();
    let rows = new.read(|tx| tx.list(&T)).unwrap();
    let keys: Vec<_> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["by-a", "by-b"], "the stalled write left nothing");
    // The same holder restarting takes its lease back at once, in a new epoch that fences
    // its previous incarnation.
    let b2 = new
        .acquire_lease("replica-b", ttl)
        .unwrap()
        .expect("own lease");
    assert!(b2.epoch > b.epoch);
    assert!(new.write(|tx| tx.put(&T, "x", &"1".to_string())).is_err());
    new.fence_writes(&b2).unwrap();
    new.write(|tx| tx.put(&T, "x", &"1".to_string())).unwrap();
    // A clean stop hands over without waiting for the expiry.
    new.release_lease(&b2).unwrap();
    assert!(old.acquire_lease("replica-a", ttl).unwrap().is_some());
}

/// The store over TLS to a server that lets TCP clients in only with TLS and SCRAM (channel
/// binding with the connector's hash of the server certificate): the data goes through when the
/// URL names the CA, with `require` and with the default `prefer`; plain text is refused by the
/// server.
#[test]
fn postgres_tls_with_the_servers_ca_carries_the_data() {
    if !available_or_skip("postgres_tls_with_the_servers_ca_carries_the_data") {
        return;
    }
    let tls = TestTls::new(&["127.0.0.1", "localhost"]).unwrap();
    let server = TestServer::start_tls(&tls).unwrap();
    let url = server.create_db("tls").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tls.write_ca(&tmp.path().join("ca.pem")).unwrap();

    let store = Store::open_postgres(
        &format!("{url}?sslmode=require&sslrootcert={ca}&channel_binding=require"),
        true,
    )
    .unwrap();
    store
        .write(|tx| tx.put(&T, "over-tls", &"sealed".to_string()))
        .unwrap();
    drop(store);
    // libpq's name for what require does here, the host by name, and the default sslmode.
    for url in [
        format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        format!(
            "postgres://tether:{TLS_PASSWORD}@localhost:{}/tls?sslrootcert={ca}",
            server.port()
        ),
    ] {
        let store = Store::open_postgres(&url, false).unwrap();
        let got = store.read(|tx| tx.get(&T, "over-tls")).unwrap();
        assert_eq!(got.as_deref(), Some("sealed"), "{url}");
    }

    let err = Store::open_postgres(&format!("{url}?sslmode=disable"), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no encryption"), "{msg}");
    assert!(!msg.contains(TLS_PASSWORD), "{msg}");
}

/// A server whose certificate the named CA did not sign, or that is not for the host in the URL,
/// is refused, with `require` and with `prefer` alike (never a retry in plain text), and the
/// message names the database and what to change.
#[test]
fn postgres_tls_refuses_a_server_it_cannot_verify() {
    if !available_or_skip("postgres_tls_refuses_a_server_it_cannot_verify") {
        return;
    }
    let tls = TestTls::new(&["127.0.0.1"]).unwrap();
    let server = TestServer::start_tls(&tls).unwrap();
    let url = server.create_db("mitm").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let other = TestTls::new(&["127.0.0.1"]).unwrap();
    let wrong = other.write_ca(&tmp.path().join("other-ca.pem")).unwrap();
    let right = tls.write_ca(&tmp.path().join("ca.pem")).unwrap();

    for mode in ["require", "prefer"] {
        let err = Store::open_postgres(&format!("{url}?sslmode={mode}&sslrootcert={wrong}"), true)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not trusted"), "{msg}");
        assert!(msg.contains("sslrootcert=/path/ca.pem"), "{msg}");
        assert!(msg.contains("tether:***@127.0.0.1"), "{msg}");
        assert!(!msg.contains(TLS_PASSWORD), "{msg}");
    }
    // The right CA, but the certificate has no name `localhost`.
    let by_name = format!(
        "postgres://tether:{TLS_PASSWORD}@localhost:{}/mitm?sslmode=require&sslrootcert={right}",
        server.port()
    );
    let msg = Store::open_postgres(&by_name, true)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not for the host in the URL"), "{msg}");
}

/// `sslmode=require` against a server without TLS, and CA files that cannot be used: clear
/// errors that name the database, before any data is sent.
#[test]
fn postgres_tls_required_but_impossible_fails_clearly() {
    if !available_or_skip("postgres_tls_required_but_impossible_fails_clearly") {
        return;
    }
    let tls = TestTls::new(&["127.0.0.1"]).unwrap();
    let server = TestServer::start().unwrap();
    let url = server.create_db("plain").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tls.write_ca(&tmp.path().join("ca.pem")).unwrap();

    let err =
        Store::open_postgres(&format!("{url}?sslmode=require&sslrootcert={ca}"), true).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("offers no TLS"), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{}/plain", server.port())),
        "{msg}"
    );

    let missing = tmp.path().join("missing.pem").display().to_string();
    let err = Store::open_postgres(
        &format!("{url}?sslmode=require&sslrootcert={missing}"),
        true,
    )
    .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot read sslrootcert {missing}")),
        "{msg}"
    );
    assert!(msg.contains("/plain"), "{msg}");

    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let junk = junk.display().to_string();
    let msg = Store::open_postgres(&format!("{url}?sslrootcert={junk}"), true)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("sslrootcert {junk}")), "{msg}");

    // The default (prefer) still reaches a server without TLS, as before.
    Store::open_postgres(&format!("{url}?sslrootcert={ca}"), true).unwrap();
}
